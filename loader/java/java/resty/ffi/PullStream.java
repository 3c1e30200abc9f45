/*
 * A streaming answer pulled from an Iterator<byte[]> or a Stream<byte[]>
 * on one thread: each element is sent as one chunk as soon as next()
 * returns it, then the task ends (rc 0; rc 1 with the exception when the
 * source throws, after the chunks before it).
 *
 * On a platform thread (a poller, or a stream thread for a stage's value)
 * a chunk is sent with the core's blocking respond_chunk: the thread waits
 * there while the reader is a window behind. On a virtual thread it is
 * offered without blocking and the thread parks until Window says there
 * may be room (a native call that blocks would pin the carrier).
 *
 * Cancellation (nobody reads any more): seen by the next chunk, or by the
 * java-streams thread (Streams) within about 20 ms even while next() is
 * slow. Then iteration stops, the thread pulling is interrupted (a source
 * sleeping or blocked on an interruptible wait wakes), and the source is
 * closed: Stream.close(), so its onClose handlers run, or close() of an
 * Iterator that is AutoCloseable. A source is closed at its normal end
 * too: the loader owns a stream once the handler returned it.
 *
 * The interrupt is only ever sent while this stream runs on that thread
 * (under the lock), and cleared before the thread moves on, so it never
 * reaches the next call the thread serves.
 */
package resty.ffi;

import java.util.Iterator;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.BaseStream;

final class PullStream extends Streams.Open implements Window.Waiter {
    private static final long RECHECK_NS = Window.RECHECK_MS * 1_000_000L;

    private final Object source;
    private final Serve serve;
    /** Where to wait for room without blocking; null: block in the core. */
    private final Window window;
    private final AtomicBoolean closed = new AtomicBoolean();
    private volatile boolean cancelled;
    /** The thread pulling, while it does (set and cleared under the lock). */
    private volatile Thread runner;

    PullStream(Task task, Object source, Serve serve, Window window) {
        super(task);
        this.source = source;
        this.serve = serve;
        this.window = window;
    }

    /** Pulls to the end on this thread and answers the task. Never throws. */
    void run() {
        Throwable error = null;
        synchronized (this) {
            runner = Thread.currentThread();
        }
        try {
            Streams.open(this);
            Iterator<?> it = source instanceof BaseStream
                    ? ((BaseStream<?, ?>) source).iterator()
                    : (Iterator<?>) source;
            while (!cancelled && it.hasNext()) {
                Object x = it.next();
                if (!(x instanceof byte[])) {
                    throw new ClassCastException(Streams.badElement(x));
                }
                int r = window == null ? task.offer((byte[]) x, true) : offer((byte[]) x);
                if (r != 0) {
                    // 1: nobody reads; -1: the task was answered elsewhere
                    cancelled = true;
                }
            }
        } catch (Throwable e) {
            error = e;
        } finally {
            synchronized (this) {
                runner = null;
            }
            // an interrupt from cancel() was for the source, not for what
            // this thread does next
            Thread.interrupted();
        }
        Streams.closed(this);
        Throwable closing = close();
        if (error == null) {
            error = closing;
        }
        // nobody reads a cancelled stream's error: answered rc 0, nil
        serve.end(task, cancelled ? null : error);
    }

    /** Offers b, parking this (virtual) thread while the window is full. */
    private int offer(byte[] b) {
        boolean waiting = false;
        while (true) {
            int r = task.offer(b, false);
            if (r != 2) {
                return r;
            }
            if (cancelled) {
                return 1;
            }
            if (!waiting) {
                // offer once more after registering: room may have come between
                window.await(this);
                waiting = true;
                continue;
            }
            LockSupport.parkNanos(this, RECHECK_NS);
            waiting = false;
        }
    }

    @Override
    public void spaceMaybe() {
        Thread t = runner;
        if (t != null) {
            LockSupport.unpark(t);
        }
    }

    @Override
    void cancel() {
        cancelled = true;
        synchronized (this) {
            Thread t = runner;
            if (t != null) {
                t.interrupt();
            }
        }
        Throwable e = close();
        if (e != null) {
            serve.logQuietly(e, "closing a cancelled stream: ");
        }
    }

    /** Closes the source once; what close() threw, or null. */
    private Throwable close() {
        if (!(source instanceof AutoCloseable) || !closed.compareAndSet(false, true)) {
            return null;
        }
        try {
            ((AutoCloseable) source).close();
            return null;
        } catch (Throwable e) {
            return e;
        }
    }
}
