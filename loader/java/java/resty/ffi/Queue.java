/*
 * A task queue of resty-ffi: what a compat-style runtime's
 * `init(String cfg, long tq)` receives as tq, wrapped.
 *
 *   Queue q = Queue.of(tq);
 *   for (Task t; (t = q.poll()) != null; ) t.respond(0, t.request());
 *
 * poll() blocks until a task arrives or the queue is finished (rt:__unload()
 * in Lua, after pending tasks are served): then it returns null, and the
 * runtime's threads should end. Any number of threads may poll one queue.
 *
 * Out of memory: a task whose Task object cannot be allocated is answered
 * at once with the OutOfMemoryError (rc 1) and poll() goes on to the next
 * one, so a poller never loses a task and never returns null early.
 */
package resty.ffi;

public final class Queue {
    private final long tq;

    private Queue(long tq) {
        this.tq = tq;
    }

    /** Wraps tq; throws IllegalArgumentException if the loader never handed it out. */
    public static Queue of(long tq) {
        if (!Native.isQueue(tq)) {
            throw new IllegalArgumentException(
                    String.format("resty.ffi: 0x%x is not a task queue (pass the tq your init was given)", tq));
        }
        return new Queue(tq);
    }

    /** Blocks for the next task; null once the queue is finished. */
    public Task poll() {
        while (true) {
            long t = Native.poll(tq);
            if (t == 0) {
                return null;
            }
            Task task = Task.wrap(t);
            if (task != null) {
                return task;
            }
        }
    }

    /** The next task if one is queued right now, else null; never blocks. */
    public Task tryPoll() {
        while (true) {
            long t = Native.tryPoll(tq);
            if (t == 0) {
                return null;
            }
            Task task = Task.wrap(t);
            if (task != null) {
                return task;
            }
        }
    }

    /** True once the queue is finished and every task was taken. */
    public boolean finished() {
        return Native.finished(tq);
    }

    /** The queue's address, as init received it. */
    public long address() {
        return tq;
    }
}
