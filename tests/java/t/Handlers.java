/*
 * Test runtimes in the handler style: sleeping (sync and async), throwing,
 * reporting where they run.
 */
package t;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

public class Handlers {
    static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String s(byte[] b) {
        return b == null ? "<null>" : new String(b, StandardCharsets.UTF_8);
    }

    public static Function<byte[], CompletionStage<byte[]>> asleep(String cfg) {
        return req -> CompletableFuture.supplyAsync(() -> b("slept " + s(req)),
                CompletableFuture.delayedExecutor(1, TimeUnit.SECONDS));
    }

    /** Sleeps cfg ms (1000 without a cfg) on the calling thread. */
    public static Function<byte[], byte[]> sleepSync(String cfg) {
        long ms = cfg == null ? 1000 : Long.parseLong(cfg);
        return req -> {
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                throw new RuntimeException(e);
            }
            return b("slept " + s(req));
        };
    }

    /** Logs at each level it is asked for ("warn info"), then answers. */
    public static Function<byte[], byte[]> logger(String cfg) {
        return req -> {
            resty.ffi.Log.warn("java-warn-line");
            resty.ffi.Log.info("java-info-line");
            resty.ffi.Log.log(resty.ffi.Log.ERROR, "java-error-line");
            return b("logged");
        };
    }

    static class Boom extends RuntimeException {
        Boom(String m) {
            super(m);
        }
    }

    public static Function<byte[], byte[]> raiser(String cfg) {
        return req -> {
            switch (s(req)) {
                case "raise":
                    throw new Boom("no luck with raise");
                case "npe":
                    String x = null;
                    return b(x.trim());
                default:
                    return b("fine");
            }
        };
    }

    public static Function<byte[], CompletionStage<byte[]>> raiserAsync(String cfg) {
        return req -> {
            switch (s(req)) {
                case "raise":
                    throw new Boom("thrown before the stage");
                case "fail":
                    return CompletableFuture.failedFuture(new IllegalStateException("stage failed"));
                case "nil":
                    return CompletableFuture.completedFuture(null);
                default:
                    return CompletableFuture.supplyAsync(() -> b("fine"));
            }
        };
    }

    /** Answers the request as seen (null reported as <null>) and facts about the JVM. */
    public static Function<byte[], byte[]> where(String cfg) {
        return req -> b("req=" + s(req) + " cfg=" + cfg
                + " java=" + Runtime.version().feature()
                + " thread=" + Thread.currentThread().getName()
                + " maxheap=" + Runtime.getRuntime().maxMemory() / (1024 * 1024)
                + " user=" + System.getProperty("user.name"));
    }

    /** Ends the worker process, as System.exit does wherever it is called. */
    public static Function<byte[], byte[]> exiter(String cfg) {
        return req -> {
            System.exit(3);
            return null;
        };
    }

    @SuppressWarnings("rawtypes")
    public static Function raw(String cfg) {
        return req -> req;
    }
}
