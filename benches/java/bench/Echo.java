/*
 * Java echo runtimes for resty-ffi's benchmarks (benches/run.py), one per
 * style of the Java loader:
 *
 *   bench.Echo,init,threads=2   compat style: init(cfg, tq) starts poller
 *                               threads on the loader's API (Queue, Task:
 *                               JNI natives registered by the loader)
 *   bench.Echo,handler          handler style: a Function echoing the
 *                               request; "!stream:N:SIZE" answers instead
 *                               with an Iterator of N chunks of SIZE bytes
 *                               (a new byte[] each, starting with its
 *                               index), streamed by the loader (section 7)
 */
package bench;

import java.nio.charset.StandardCharsets;
import java.util.Iterator;
import java.util.function.Function;
import resty.ffi.Queue;
import resty.ffi.Task;

public class Echo {
    public static int init(String cfg, long tq) {
        int threads = 1;
        if (cfg != null && cfg.startsWith("threads=")) {
            threads = Integer.parseInt(cfg.substring("threads=".length()));
        }
        Queue q = Queue.of(tq);
        for (int i = 0; i < threads; i++) {
            Thread t = new Thread(() -> {
                for (Task task; (task = q.poll()) != null; ) {
                    task.respond(task.request());
                }
            }, "bench-echo-" + i);
            t.setDaemon(true);
            t.start();
        }
        return 0;
    }

    public static Function<byte[], Object> handler(String cfg) {
        return req -> req != null && req.length > 8 && req[0] == '!' ? stream(req) : req;
    }

    /** "!stream:N:SIZE": N chunks of SIZE bytes. */
    static Iterator<byte[]> stream(byte[] req) {
        String[] p = new String(req, StandardCharsets.US_ASCII).split(":");
        int n = Integer.parseInt(p[1]);
        int size = Integer.parseInt(p[2]);
        return new Iterator<byte[]>() {
            int i = 0;

            @Override
            public boolean hasNext() {
                return i < n;
            }

            @Override
            public byte[] next() {
                i++;
                byte[] b = new byte[size];
                for (int k = 7, v = i; k >= 0 && v > 0; k--, v /= 10) {
                    if (k < size) {
                        b[k] = (byte) ('0' + v % 10);
                    }
                }
                return b;
            }
        };
    }
}
