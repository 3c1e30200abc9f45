/*
 * Test runtimes that stream their answers, one per shape the Java loader
 * streams (Iterator, Stream, Flow.Publisher, each also as a stage's
 * value) plus a compat runtime on Task.chunk / Task.cancelled.
 *
 * Requests are "n:size:ms[:failAt]": n chunks of size bytes, ms apart;
 * chunk i (from 1) starts with i as 8 digits. With failAt, the source
 * throws IllegalStateException("source broke at <failAt>") instead of
 * producing chunk failAt. When the loader stops a source, a marker line
 * goes to error.log ("java <shape> closed/cancelled/interrupted after K").
 */
package t;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Flow;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Function;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import resty.ffi.Log;
import resty.ffi.Queue;
import resty.ffi.Task;

public class Streaming {
    /** Chunks the last "same" source produced (memory and demand tests). */
    static final AtomicInteger PRODUCED = new AtomicInteger();

    static final class Spec {
        final int n, size, failAt;
        final long ms;

        Spec(byte[] req) {
            String[] p = new String(req, StandardCharsets.UTF_8).split(":");
            n = Integer.parseInt(p[0]);
            size = Integer.parseInt(p[1]);
            ms = Long.parseLong(p[2]);
            failAt = p.length > 3 ? Integer.parseInt(p[3]) : 0;
        }

        byte[] chunk(int i) {
            if (i == failAt) {
                throw new IllegalStateException("source broke at " + i);
            }
            byte[] b = new byte[size];
            Arrays.fill(b, (byte) ('a' + i % 26));
            byte[] head = String.format("%08d", i).getBytes(StandardCharsets.US_ASCII);
            System.arraycopy(head, 0, b, 0, Math.min(head.length, size));
            return b;
        }

        /** Sleeps ms; an interrupt becomes a RuntimeException (after the marker). */
        void pause(String what, int done) {
            if (ms <= 0) {
                return;
            }
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                Log.notice("java " + what + " interrupted after " + done);
                throw new RuntimeException("interrupted", e);
            }
        }
    }

    /** An Iterator, not closeable: stops when the loader stops pulling (or interrupts its sleep). */
    public static Function<byte[], Iterator<byte[]>> iter(String cfg) {
        return req -> {
            Spec s = new Spec(req);
            return new Iterator<byte[]>() {
                int i = 0;

                @Override
                public boolean hasNext() {
                    return i < s.n;
                }

                @Override
                public byte[] next() {
                    if (i >= s.n) {
                        throw new NoSuchElementException();
                    }
                    if (i > 0) {
                        s.pause("iter", i);
                    }
                    i++;
                    return s.chunk(i);
                }
            };
        };
    }

    /** A Stream whose onClose handler writes the marker. */
    public static Function<byte[], Stream<byte[]>> stream(String cfg) {
        return req -> {
            Spec s = new Spec(req);
            AtomicInteger done = new AtomicInteger();
            return IntStream.rangeClosed(1, s.n).mapToObj(i -> {
                if (i > 1) {
                    s.pause("stream", done.get());
                }
                done.set(i);
                return s.chunk(i);
            }).onClose(() -> Log.notice("java stream closed after " + done.get() + " of " + s.n));
        };
    }

    /** A Publisher honouring demand, emitting from its own thread. */
    public static Function<byte[], Flow.Publisher<byte[]>> publisher(String cfg) {
        return req -> new Ticker(new Spec(req), false);
    }

    /** As publisher, every element the same array (no Java garbage), counted in PRODUCED. */
    public static Function<byte[], Flow.Publisher<byte[]>> samePublisher(String cfg) {
        return req -> new Ticker(new Spec(req), true);
    }

    /** An Iterator returning one array n times (no Java garbage), counted in PRODUCED. */
    public static Function<byte[], Iterator<byte[]>> sameIter(String cfg) {
        return req -> {
            Spec s = new Spec(req);
            byte[] one = s.chunk(1);
            PRODUCED.set(0);
            return new Iterator<byte[]>() {
                int i = 0;

                @Override
                public boolean hasNext() {
                    return i < s.n;
                }

                @Override
                public byte[] next() {
                    i++;
                    PRODUCED.incrementAndGet();
                    return one;
                }
            };
        };
    }

    /** What PRODUCED says now. */
    public static Function<byte[], byte[]> produced(String cfg) {
        return req -> String.valueOf(PRODUCED.get()).getBytes(StandardCharsets.US_ASCII);
    }

    public static Function<byte[], CompletionStage<Iterator<byte[]>>> stageIter(String cfg) {
        return req -> CompletableFuture.supplyAsync(() -> iter(cfg).apply(req),
                CompletableFuture.delayedExecutor(30, TimeUnit.MILLISECONDS));
    }

    public static Function<byte[], CompletionStage<Stream<byte[]>>> stageStream(String cfg) {
        return req -> CompletableFuture.supplyAsync(() -> stream(cfg).apply(req),
                CompletableFuture.delayedExecutor(30, TimeUnit.MILLISECONDS));
    }

    public static Function<byte[], CompletionStage<Flow.Publisher<byte[]>>> stagePublisher(String cfg) {
        return req -> CompletableFuture.supplyAsync(() -> publisher(cfg).apply(req),
                CompletableFuture.delayedExecutor(30, TimeUnit.MILLISECONDS));
    }

    /** A stream of the wrong element type after one good chunk. */
    public static Function<byte[], Iterator<Object>> wrongType(String cfg) {
        return req -> Arrays.<Object>asList("ok;".getBytes(StandardCharsets.US_ASCII), "a string").iterator();
    }

    /** Emits s.n chunks ms apart as demand allows, on a thread of its own per subscription. */
    static final class Ticker implements Flow.Publisher<byte[]> {
        private final Spec s;
        private final boolean same;

        Ticker(Spec s, boolean same) {
            this.s = s;
            this.same = same;
        }

        @Override
        public void subscribe(Flow.Subscriber<? super byte[]> sub) {
            AtomicLong demand = new AtomicLong();
            AtomicInteger sent = new AtomicInteger();
            Object lock = new Object();
            boolean[] cancelled = {false};
            byte[] one = same ? s.chunk(1) : null;
            if (same) {
                PRODUCED.set(0);
            }
            sub.onSubscribe(new Flow.Subscription() {
                @Override
                public void request(long n) {
                    synchronized (lock) {
                        demand.addAndGet(n);
                        lock.notifyAll();
                    }
                }

                @Override
                public void cancel() {
                    synchronized (lock) {
                        if (!cancelled[0]) {
                            cancelled[0] = true;
                            Log.notice("java publisher cancelled after " + sent.get());
                        }
                        lock.notifyAll();
                    }
                }
            });
            Thread t = new Thread(() -> {
                try {
                    for (int i = 1; i <= s.n; i++) {
                        synchronized (lock) {
                            while (demand.get() == 0 && !cancelled[0]) {
                                lock.wait();
                            }
                            if (cancelled[0]) {
                                return;
                            }
                            demand.decrementAndGet();
                        }
                        if (i > 1 && s.ms > 0) {
                            // a slow source: an interrupt is not how a Publisher is stopped
                            long until = System.nanoTime() + s.ms * 1_000_000L;
                            synchronized (lock) {
                                long left;
                                while (!cancelled[0] && (left = until - System.nanoTime()) > 0) {
                                    lock.wait(Math.max(1, left / 1_000_000L));
                                }
                                if (cancelled[0]) {
                                    return;
                                }
                            }
                        }
                        byte[] b;
                        try {
                            b = same ? one : s.chunk(i);
                        } catch (RuntimeException e) {
                            sub.onError(e);
                            return;
                        }
                        sent.incrementAndGet();
                        if (same) {
                            PRODUCED.incrementAndGet();
                        }
                        sub.onNext(b);
                    }
                    sub.onComplete();
                } catch (InterruptedException e) {
                    sub.onError(e);
                }
            }, "ticker");
            t.setDaemon(true);
            t.start();
        }
    }

    /** Compat style: Task.chunk / Task.cancelled on the loader's plain-JDK API. */
    public static int compat(String cfg, long tq) {
        Queue q = Queue.of(tq);
        for (int k = 0; k < 4; k++) {
            Thread t = new Thread(() -> {
                for (Task task; (task = q.poll()) != null; ) {
                    serveCompat(task);
                }
            }, "compat-stream-" + k);
            t.setDaemon(true);
            t.start();
        }
        return 0;
    }

    private static void serveCompat(Task task) {
        try {
            Spec s = new Spec(task.request());
            for (int i = 1; i <= s.n; i++) {
                if (i > 1 && s.ms > 0) {
                    // a slow source looks at cancelled() while it waits
                    long until = System.nanoTime() + s.ms * 1_000_000L;
                    while (System.nanoTime() < until && !task.cancelled()) {
                        Thread.sleep(5);
                    }
                }
                if (task.cancelled() || task.chunk(s.chunk(i)) == 1) {
                    Log.notice("java compat cancelled after " + (i - 1));
                    task.respond(0, null);
                    return;
                }
            }
            task.respond("end".getBytes(StandardCharsets.US_ASCII));
        } catch (Throwable e) {
            task.fail(1, e);
        }
    }
}
