/*
 * Test runtimes whose calls park until cancelled or for ever: the native
 * style waiting on each task until it is cancelled (counting what it saw,
 * asked with "seen"), and an async handler whose stage never completes.
 * (A sync handler that sleeps long: Handlers.sleepSync with a cfg.)
 * And an async handler whose stages never complete unless cancelled,
 * counting the cancellations its own whenComplete saw ("seen").
 */
package t;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Function;
import resty.ffi.Queue;
import resty.ffi.Task;

public class Parked {
    static final AtomicInteger SEEN = new AtomicInteger();

    public static int init(String cfg, long tq) {
        Queue q = Queue.of(tq);
        Thread th = new Thread(() -> serve(q), "parked");
        th.setDaemon(true);
        th.start();
        return 0;
    }

    static void serve(Queue q) {
        for (Task t; (t = q.poll()) != null; ) {
            if ("seen".equals(new String(t.request(), StandardCharsets.UTF_8))) {
                t.respond(String.valueOf(SEEN.get()).getBytes(StandardCharsets.UTF_8));
                continue;
            }
            Task task = t;
            Thread w = new Thread(() -> waitForCancel(task), "parked-call");
            w.setDaemon(true);
            w.start();
        }
    }

    /** Waits up to a minute for the task to be cancelled, then answers. */
    static void waitForCancel(Task t) {
        long deadline = System.nanoTime() + 60_000_000_000L;
        try {
            while (!t.cancelled() && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (t.cancelled()) {
            SEEN.incrementAndGet();
        }
        t.respond("woke".getBytes(StandardCharsets.UTF_8));
    }

    public static Function<byte[], CompletionStage<byte[]>> never(String cfg) {
        return req -> new CompletableFuture<>();
    }

    static final AtomicInteger CANCELLED = new AtomicInteger();

    /**
     * "seen": how many "wait" stages were cancelled; "wait": a stage that
     * completes only by being cancelled; "minimal": one that cannot be
     * cancelled at all (minimalCompletionStage); anything else: echoed.
     */
    public static Function<byte[], CompletionStage<byte[]>> cancellable(String cfg) {
        return req -> {
            String r = new String(req, StandardCharsets.UTF_8);
            if (r.equals("seen")) {
                return CompletableFuture.completedFuture(
                        String.valueOf(CANCELLED.get()).getBytes(StandardCharsets.UTF_8));
            }
            if (r.equals("wait")) {
                CompletableFuture<byte[]> f = new CompletableFuture<>();
                f.whenComplete((v, e) -> {
                    if (f.isCancelled() && e instanceof CancellationException) {
                        CANCELLED.incrementAndGet();
                    }
                });
                return f;
            }
            if (r.equals("minimal")) {
                return new CompletableFuture<byte[]>().minimalCompletionStage();
            }
            return CompletableFuture.completedFuture(req);
        };
    }
}
