/*
 * A streaming answer from a Flow.Publisher<byte[]>: the loader subscribes,
 * and each onNext element is sent as one chunk; onComplete ends the task
 * rc 0, onError rc 1 with the error (after the chunks received before).
 *
 * Demand follows the window: PREFETCH elements are requested at first and
 * more only as chunks are taken, so while the reader is a window behind the
 * publisher is asked for nothing and at most PREFETCH elements wait here.
 * Chunks are offered without blocking (onNext runs on the publisher's
 * thread, which must not wait for a slow client); when the window is full
 * they wait here and Window calls spaceMaybe() once room may have come.
 * No thread is held per stream: a subscriber costs only its buffer.
 *
 * Cancellation (nobody reads: a chunk refused, or the java-streams thread
 * saw it within about 20 ms): the subscription is cancelled, what waits is
 * dropped, and the task ends.
 *
 * Threads: onNext/onComplete/onError (serial, the publisher's), Window's
 * thread and java-streams may run here at once: the state is guarded by
 * this object's lock, and request/cancel are made outside it, one at a
 * time as Flow asks of a subscriber, without a lock held: whoever finds
 * nobody signalling issues what was asked meanwhile (a publisher that
 * emits from inside request() adds to the count instead of recursing).
 */
package resty.ffi;

import java.util.ArrayDeque;
import java.util.concurrent.Flow;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

final class PushStream extends Streams.Open implements Flow.Subscriber<Object>, Window.Waiter {
    static final int PREFETCH = 16;

    private final Serve serve;
    private final Window window;
    /** Asked of the subscription and not yet issued; cancel wanted. */
    private final AtomicLong requests = new AtomicLong();
    private volatile boolean cancelWanted;
    private boolean cancelSent;
    /** Signals asked while one thread issues them (0: nobody does). */
    private final AtomicInteger signalling = new AtomicInteger();
    private volatile Flow.Subscription sub;
    // guarded by this
    private final ArrayDeque<byte[]> pending = new ArrayDeque<>();
    /** Elements requested and not yet received. */
    private long demand;
    private boolean completed;
    private Throwable error;
    /** The task is answered (or being answered): nothing more happens. */
    private boolean ended;

    PushStream(Task task, Serve serve, Window window) {
        super(task);
        this.serve = serve;
        this.window = window;
    }

    /** Subscribes to p; the task is answered when it ends. Never throws. */
    @SuppressWarnings("unchecked")
    void start(Flow.Publisher<?> p) {
        try {
            Streams.open(this);
            ((Flow.Publisher<Object>) p).subscribe(this);
        } catch (Throwable e) {
            onError(e);
        }
    }

    @Override
    public void onSubscribe(Flow.Subscription s) {
        boolean refuse;
        synchronized (this) {
            refuse = sub != null || ended;
            if (!refuse) {
                sub = s;
                demand = PREFETCH;
            }
        }
        if (refuse) {
            try {
                s.cancel();
            } catch (Throwable e) {
                serve.logQuietly(e, "the publisher's cancel threw ");
            }
        } else {
            signal(false, PREFETCH);
        }
    }

    @Override
    public void onNext(Object x) {
        boolean bad = false;
        synchronized (this) {
            if (ended) {
                return;
            }
            demand--;
            if (x instanceof byte[]) {
                pending.add((byte[]) x);
            } else if (!completed) {
                error = new ClassCastException(Streams.badElement(x));
                completed = true;
                bad = true;
            }
        }
        if (bad) {
            signal(true, 0);
        }
        drain();
    }

    @Override
    public void onError(Throwable e) {
        synchronized (this) {
            if (!completed) {
                error = e != null ? e : new NullPointerException("resty.ffi: onError(null)");
                completed = true;
            }
        }
        drain();
    }

    @Override
    public void onComplete() {
        synchronized (this) {
            completed = true;
        }
        drain();
    }

    @Override
    public void spaceMaybe() {
        drain();
    }

    @Override
    void cancel() {
        synchronized (this) {
            if (ended) {
                return;
            }
            ended = true;
            pending.clear();
        }
        finish(true, null);
    }

    /** Sends what waits, as far as the window allows; asks for more, or ends. Never throws. */
    private void drain() {
        long more = 0;
        boolean gone = false;
        boolean end = false;
        Throwable err = null;
        try {
            synchronized (this) {
                if (ended) {
                    return;
                }
                boolean waiting = false;
                while (!pending.isEmpty()) {
                    int r = task.offer(pending.peek(), false);
                    if (r == 0) {
                        pending.poll();
                    } else if (r == 2) {
                        if (waiting) {
                            break;
                        }
                        // offer once more after registering: room may have come between
                        window.await(this);
                        waiting = true;
                    } else {
                        gone = true;
                        break;
                    }
                }
                if (gone) {
                    ended = true;
                    pending.clear();
                } else if (completed && pending.isEmpty()) {
                    ended = true;
                    end = true;
                    err = error;
                } else if (!completed && sub != null) {
                    long want = PREFETCH - pending.size() - demand;
                    if (want > 0) {
                        demand += want;
                        more = want;
                    }
                }
            }
        } catch (Throwable e) {
            // out of memory in here: end with it
            synchronized (this) {
                if (ended) {
                    return;
                }
                ended = true;
                pending.clear();
            }
            finish(true, e);
            return;
        }
        if (gone) {
            finish(true, null);
        } else if (end) {
            finish(false, err);
        } else if (more > 0) {
            signal(false, more);
        }
    }

    /** Asks cancel() or request(n) of the subscription, issued one call at a time. Never throws. */
    private void signal(boolean cancel, long n) {
        if (cancel) {
            cancelWanted = true;
        } else {
            requests.addAndGet(n);
        }
        if (signalling.getAndIncrement() != 0) {
            return;
        }
        int asked = 1;
        while (true) {
            Flow.Subscription s = sub;
            if (s != null) {
                try {
                    if (cancelWanted) {
                        requests.set(0);
                        if (!cancelSent) {
                            cancelSent = true;
                            s.cancel();
                        }
                    } else {
                        long r = requests.getAndSet(0);
                        if (r > 0) {
                            s.request(r);
                        }
                    }
                } catch (Throwable e) {
                    serve.logQuietly(e, "the publisher's request or cancel threw ");
                }
            }
            asked = signalling.addAndGet(-asked);
            if (asked == 0) {
                return;
            }
        }
    }

    /** The stream ended (cancel: the subscription is cancelled too); answers the task. */
    private void finish(boolean cancel, Throwable err) {
        Streams.closed(this);
        if (cancel) {
            signal(true, 0);
        }
        serve.end(task, err);
    }
}
