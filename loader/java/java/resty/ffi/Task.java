/*
 * One call from nginx, answered exactly once: a second respond() throws
 * IllegalStateException, and so does reading the request after the answer
 * (the core frees it then). Thread-safe: any thread may answer.
 *
 * Streaming: chunk(data) sends a part of the answer before the final
 * respond() (Lua reads it with st:recv(); a plain call gets the parts
 * joined); cancelled() tells whether anybody still reads.
 *
 * Out of memory: a Task is one small object (no AtomicLong beside it), and
 * fail(rc, Throwable) answers without needing the Java heap: when there is
 * no room left for Throwable.toString(), the class name and message are
 * joined natively, so the caller still reads
 * "java.lang.OutOfMemoryError: Java heap space".
 */
package resty.ffi;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.charset.StandardCharsets;

public final class Task {
    private static final VarHandle HANDLE;
    /** Named before any heap runs out (Class.getName() caches the name). */
    static final String OOM_NAME = OutOfMemoryError.class.getName();
    static final String ERROR_NAME = Error.class.getName();

    static {
        try {
            HANDLE = MethodHandles.lookup().findVarHandle(Task.class, "handle", long.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    @SuppressWarnings("unused") // through HANDLE
    private volatile long handle;
    /** Where Stages watches this task's stage (-1: not watched). */
    int slot = -1;
    /** The stage Stages watches for this task (set before its slot is taken). */
    java.util.concurrent.CompletionStage<?> stage;
    /** Set by Stages' watcher only: when it saw the JVM run out of memory while this stage ran. */
    boolean oomSeen;
    long oomAt;

    Task(long handle) {
        this.handle = handle;
    }

    /**
     * Wraps a polled handle; when even that small object cannot be
     * allocated, answers the task with the OutOfMemoryError and returns
     * null, so no task is ever lost between poll and its runtime.
     */
    static Task wrap(long t) {
        try {
            return new Task(t);
        } catch (Throwable e) {
            if (e instanceof OutOfMemoryError) {
                Stages.sawOutOfMemory();
            }
            respondThrowable(t, 1, e);
            return null;
        }
    }

    private long take() {
        long t = (long) HANDLE.getAndSet(this, 0L);
        if (t == 0) {
            throw new IllegalStateException("resty.ffi: the task is already answered");
        }
        return t;
    }

    /** The request bytes; null when Lua passed nil. */
    public byte[] request() {
        long t = handle;
        if (t == 0) {
            throw new IllegalStateException("resty.ffi: the task is already answered");
        }
        return Native.request(t);
    }

    /** Answers with rc (0 = ok) and body (null is nil in Lua). */
    public void respond(int rc, byte[] body) {
        Native.respond(take(), rc, body);
    }

    /** Answers ok with body. */
    public void respond(byte[] body) {
        respond(0, body);
    }

    /** Answers with an error: Lua sees `false, rc, message`. */
    public void fail(int rc, String message) {
        respond(rc, message == null ? null : message.getBytes(StandardCharsets.UTF_8));
    }

    /**
     * Answers with an error: Lua sees `false, rc, e.toString()`. Works with
     * the heap full (see the class comment); use it in a runtime's
     * catch (Throwable e).
     */
    public void fail(int rc, Throwable e) {
        respondThrowable(take(), rc, e);
    }

    /** Answers rc and "name: message" joined natively (no heap needed). */
    void failNatively(int rc, String name, String message) {
        Native.respondError(take(), rc, name, message);
    }

    /**
     * Sends data (copied) as the next chunk of a streaming answer; end the
     * answer with respond() as always (its body, if any, is the last
     * chunk). Returns 0 when taken, 1 when nobody reads any more (the
     * stream was closed, the call timed out, the client went away): stop
     * producing and answer the task. Blocks while the reader is a window
     * (1 MiB or 64 chunks by default) behind, in native code: call it from
     * a platform thread (a virtual thread would pin its carrier). Throws
     * IllegalStateException once the task is answered.
     */
    public int chunk(byte[] data) {
        int r = offer(data, true);
        if (r < 0) {
            throw new IllegalStateException("resty.ffi: the task is already answered");
        }
        return r;
    }

    /** True once nobody waits for the answer any more, or it was answered. */
    public boolean cancelled() {
        long t = handle;
        return t == 0 || Native.cancelled(t);
    }

    /**
     * A chunk for the loader's streams: 0 taken, 1 nobody reads, 2 the
     * window is full and data was NOT taken (only without block), -1
     * answered already. Never throws for an answered task.
     */
    int offer(byte[] data, boolean block) {
        if (data == null) {
            throw new NullPointerException("resty.ffi: a chunk is null");
        }
        long t = handle;
        if (t == 0) {
            return -1;
        }
        return block ? Native.chunk(t, data) : Native.tryChunk(t, data);
    }

    /** True once answered. */
    public boolean answered() {
        return handle == 0;
    }

    /** Answers t with rc and e's text, allocating on the heap only if it can. */
    static void respondThrowable(long t, int rc, Throwable e) {
        byte[] text = null;
        try {
            text = String.valueOf(e).getBytes(StandardCharsets.UTF_8);
        } catch (Throwable noRoom) {
            // below
        }
        if (text != null) {
            Native.respond(t, rc, text);
            return;
        }
        String name;
        String message = null;
        try {
            name = e == null ? ERROR_NAME : e.getClass().getName();
            message = e == null ? null : e.getLocalizedMessage();
        } catch (Throwable noRoom) {
            name = e instanceof OutOfMemoryError ? OOM_NAME : ERROR_NAME;
        }
        Native.respondError(t, rc, name, message);
    }
}
