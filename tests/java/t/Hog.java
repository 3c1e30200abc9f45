/*
 * Test runtimes that fill the Java heap, as a leaking handler does: every
 * chunk is kept in a static chain until OutOfMemoryError, then chunks a
 * quarter that size, and so on down to bare nodes, so the heap is full at
 * every size; the last OutOfMemoryError escapes the handler.
 *
 * Requests: "fill:SIZE:MS" fills starting at SIZE bytes, and MS ms after
 * the heap is full a thread started with the class (it needs no heap to
 * wake) drops the chain, so the test can see the runtime serve again;
 * anything else is echoed.
 *
 * Styles: sync (Function), async (a CompletionStage; the heap fills in
 * apply), inStage (the heap fills inside the stage, on a thread of the
 * runtime's own executor), compat (init(cfg, tq) polling resty.ffi.Queue
 * on its own thread).
 */
package t;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Function;
import resty.ffi.Queue;
import resty.ffi.Task;

public class Hog {
    static final class Node {
        final Node next;
        final byte[] data;

        Node(Node next, byte[] data) {
            this.next = next;
            this.data = data;
        }
    }

    static volatile Node kept;
    /** System.nanoTime() at which the releaser drops `kept`; 0: never. */
    static volatile long releaseAt;
    static final ExecutorService STAGES = Executors.newFixedThreadPool(2, r -> {
        Thread t = new Thread(r, "hog-stage");
        t.setDaemon(true);
        return t;
    });

    static {
        Thread t = new Thread(Hog::releaser, "hog-releaser");
        t.setDaemon(true);
        t.start();
    }

    static void releaser() {
        while (true) {
            LockSupport.parkNanos(5_000_000);
            long at = releaseAt;
            if (at != 0 && System.nanoTime() - at >= 0) {
                kept = null;
                releaseAt = 0;
            }
        }
    }

    /** Fills the heap (see the class comment), then throws OutOfMemoryError. */
    static void fill(int size, long releaseMs) {
        for (int s = size; s > 0; s /= 4) {
            try {
                while (true) {
                    kept = new Node(kept, new byte[s]);
                }
            } catch (OutOfMemoryError e) {
                // full at this size: go on smaller
            }
        }
        try {
            while (true) {
                kept = new Node(kept, null);
            }
        } catch (OutOfMemoryError e) {
            // full
        }
        releaseAt = System.nanoTime() + releaseMs * 1_000_000;
        // the error escapes from here: one more node would fit only if
        // something was freed meanwhile (the caught errors, another
        // thread's garbage), so keep allocating until one does not
        while (true) {
            kept = new Node(kept, null);
        }
    }

    /** Fills the heap when the request says "fill:SIZE:MS"; returns req. */
    static byte[] serve(byte[] req) {
        String s = req == null ? "" : new String(req, StandardCharsets.UTF_8);
        if (s.startsWith("fill:")) {
            String[] p = s.split(":");
            fill(Integer.parseInt(p[1]), Long.parseLong(p[2]));
        }
        return req;
    }

    public static Function<byte[], byte[]> sync(String cfg) {
        return Hog::serve;
    }

    public static Function<byte[], CompletionStage<byte[]>> async(String cfg) {
        return req -> CompletableFuture.completedFuture(serve(req));
    }

    public static Function<byte[], CompletionStage<byte[]>> inStage(String cfg) {
        return req -> CompletableFuture.supplyAsync(() -> serve(req), STAGES);
    }

    public static int compat(String cfg, long tq) {
        Queue q = Queue.of(tq);
        Thread th = new Thread(() -> {
            for (Task t; (t = q.poll()) != null; ) {
                try {
                    t.respond(serve(t.request()));
                } catch (Throwable e) {
                    t.fail(1, e);
                }
            }
        }, "hog-compat");
        th.setDaemon(true);
        th.start();
        return 0;
    }
}
