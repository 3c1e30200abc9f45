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
        long t = Native.poll(tq);
        return t == 0 ? null : new Task(t);
    }

    /** The next task if one is queued right now, else null; never blocks. */
    public Task tryPoll() {
        long t = Native.tryPoll(tq);
        return t == 0 ? null : new Task(t);
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
