/*
 * The CompletionStages a handler-style runtime has in flight, watched for
 * the one way a call can be lost that the loader does not see: when the
 * heap is full, the thread completing a stage (the runtime's executor)
 * cannot even allocate the failure CompletableFuture completes with; it
 * dies of a second OutOfMemoryError and the stage never completes.
 *
 * So: every stage the loader waits on takes a slot here (a fixed array, no
 * allocation per call); one watcher thread per JVM learns of every
 * OutOfMemoryError of the JVM (JVMTI's ResourceExhausted event, counted by
 * the loader, plus the ones the loader's own code catches), twenty times a
 * second marks every stage in flight when one happened, and answers each
 * marked stage still unanswered -Dresty.ffi.oomGrace ms (default 3000)
 * after its mark, with rc 1 and "java.lang.OutOfMemoryError: ...". A stage
 * that completes later still is ignored (its call is answered once). The
 * watcher allocates nothing while it looks, marks and answers, so it works
 * with the heap full.
 *
 * The same watcher cancels the stage of a call given up (its Lua timeout,
 * its client gone, its light thread killed: Task.cancelled()): each round
 * it asks the core about every stage in flight (one native call each, no
 * heap), and for a call nobody waits for any more it takes the slot,
 * cancels the stage (Future.cancel(true), else
 * toCompletableFuture().cancel(true)), so the handler's code sees it
 * cancelled (isCancelled(), a whenComplete gets a CancellationException)
 * within about EVERY_NS, and answers the task itself if cancelling did not
 * (a stage that cannot be cancelled; the core frees that answer). Cancelling
 * a stage does not reach the stages it was derived from (Java's rule):
 * a handler that wants its source stopped returns the stage it can
 * cancel, or stops the source in a whenComplete. A call costs nothing
 * more: its stage takes the slot it took already.
 *
 * More than SLOTS stages in flight at once: the others are not watched
 * (they are answered when they complete, as always, and not cancelled).
 */
package resty.ffi;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;

final class Stages {
    static final long GRACE_MS = Math.max(0, Long.getLong("resty.ffi.oomGrace", 3000));
    private static final int SLOTS = 1024;
    private static final long EVERY_NS = 50_000_000L;
    private static final VarHandle SLOT = MethodHandles.arrayElementVarHandle(Task[].class);
    private static final AtomicLong SEEN_IN_JAVA = new AtomicLong();
    private static final String LOST = "the JVM ran out of memory while this call's CompletionStage"
            + " was running, and " + GRACE_MS + " ms later it had not completed"
            + " (the thread completing it may have died of the error)";
    /** Every runtime's stages; replaced, never changed in place. */
    private static volatile Stages[] all = new Stages[0];
    private static boolean watching;

    private final Task[] inFlight = new Task[SLOTS];
    private final AtomicInteger hint = new AtomicInteger();
    /** Set when the runtime's queue finished: dropped once empty. */
    private volatile boolean finished;

    private Stages() {}

    /** A new runtime's set, watched from now on. */
    static synchronized Stages create() {
        Stages s = new Stages();
        Stages[] a = all;
        Stages[] b = java.util.Arrays.copyOf(a, a.length + 1);
        b[a.length] = s;
        all = b;
        if (!watching) {
            Thread t = new Thread(Stages::watch, "java-stages");
            t.setDaemon(true);
            t.start();
            watching = true;
        }
        return s;
    }

    /** The loader's own code caught an OutOfMemoryError (counted with JVMTI's). */
    static void sawOutOfMemory() {
        SEEN_IN_JAVA.incrementAndGet();
    }

    static long outOfMemoryEvents() {
        return Native.outOfMemoryEvents() + SEEN_IN_JAVA.get();
    }

    /** The queue finished: drop this set once its stages are answered. */
    void finish() {
        finished = true;
    }

    /** Watches task's stage from now until remove(task). Never throws. */
    void add(Task task, CompletionStage<?> stage) {
        task.stage = stage;
        int start = hint.getAndIncrement();
        for (int k = 0; k < SLOTS; k++) {
            int i = (start + k) & (SLOTS - 1);
            if (inFlight[i] == null && SLOT.compareAndSet(inFlight, i, (Task) null, task)) {
                task.slot = i;
                return;
            }
        }
    }

    /** task's stage completed. Never throws. */
    void remove(Task task) {
        int i = task.slot;
        if (i >= 0) {
            SLOT.compareAndSet(inFlight, i, task, (Task) null);
        }
    }

    private boolean empty() {
        for (Task t : inFlight) {
            if (t != null) {
                return false;
            }
        }
        return true;
    }

    /**
     * Cancels the stages of calls nobody waits for any more; marks the
     * stages in flight now if the JVM ran out of memory since the last
     * round (oom), and answers those marked GRACE_MS ago or earlier.
     */
    private void sweep(long now, boolean oom) {
        for (int i = 0; i < SLOTS; i++) {
            // acquire: the stage was set before the slot was taken
            Task t = (Task) SLOT.getAcquire(inFlight, i);
            if (t == null) {
                continue;
            }
            if (t.cancelled()) {
                if (SLOT.compareAndSet(inFlight, i, t, (Task) null)) {
                    cancel(t);
                }
            } else if (oom && !t.oomSeen) {
                t.oomAt = now;
                t.oomSeen = true;
            } else if (t.oomSeen && now - t.oomAt >= GRACE_MS * 1_000_000L
                    && SLOT.compareAndSet(inFlight, i, t, (Task) null)) {
                try {
                    t.failNatively(1, Task.OOM_NAME, LOST);
                } catch (Throwable e) {
                    // its stage completed meanwhile
                }
            }
        }
    }

    /** t's call was given up: cancel its stage, then make sure t is answered. Never throws. */
    private static void cancel(Task t) {
        CompletionStage<?> s = t.stage;
        try {
            if (s instanceof Future) {
                ((Future<?>) s).cancel(true);
            } else if (s != null) {
                s.toCompletableFuture().cancel(true);
            }
        } catch (Throwable e) {
            // a stage that refuses (UnsupportedOperationException), or no heap: answered below
        }
        try {
            if (!t.answered()) {
                t.respond(0, null); // nobody reads it: the core frees it
            }
        } catch (Throwable e) {
            // its stage completed meanwhile
        }
    }

    private static void watch() {
        try {
            Native.nameThread("java-stages");
        } catch (Throwable e) {
            // keeps the JVM's name
        }
        long seen = outOfMemoryEvents();
        while (true) {
            LockSupport.parkNanos(EVERY_NS);
            try {
                long now = System.nanoTime();
                long n = outOfMemoryEvents();
                boolean oom = n != seen;
                seen = n;
                for (Stages s : all) {
                    s.sweep(now, oom);
                    if (s.finished && s.empty()) {
                        drop(s);
                    }
                }
            } catch (Throwable e) {
                // no heap to drop a set with: next round
            }
        }
    }

    private static synchronized void drop(Stages s) {
        Stages[] a = all;
        if (java.util.Arrays.asList(a).indexOf(s) < 0) {
            return;
        }
        int n = 0;
        Stages[] b = new Stages[a.length - 1];
        for (Stages x : a) {
            if (x != s) {
                b[n++] = x;
            }
        }
        all = b;
    }
}
