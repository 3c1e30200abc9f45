/*
 * One call from nginx, answered exactly once: a second respond() throws
 * IllegalStateException, and so does reading the request after the answer
 * (the core frees it then). Thread-safe: any thread may answer.
 */
package resty.ffi;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.atomic.AtomicLong;

public final class Task {
    private final AtomicLong handle;

    Task(long handle) {
        this.handle = new AtomicLong(handle);
    }

    /** The request bytes; null when Lua passed nil. */
    public byte[] request() {
        long t = handle.get();
        if (t == 0) {
            throw new IllegalStateException("resty.ffi: the task is already answered");
        }
        return Native.request(t);
    }

    /** Answers with rc (0 = ok) and body (null is nil in Lua). */
    public void respond(int rc, byte[] body) {
        long t = handle.getAndSet(0);
        if (t == 0) {
            throw new IllegalStateException("resty.ffi: the task is already answered");
        }
        Native.respond(t, rc, body);
    }

    /** Answers ok with body. */
    public void respond(byte[] body) {
        respond(0, body);
    }

    /** Answers with an error: Lua sees `false, rc, message`. */
    public void fail(int rc, String message) {
        respond(rc, message == null ? null : message.getBytes(StandardCharsets.UTF_8));
    }

    /** True once answered. */
    public boolean answered() {
        return handle.get() == 0;
    }
}
