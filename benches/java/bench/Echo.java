/*
 * Java echo runtimes for resty-ffi's benchmarks (benches/run.py), one per
 * style of the Java loader:
 *
 *   bench.Echo,init,threads=2   compat style: init(cfg, tq) starts poller
 *                               threads on the loader's API (Queue, Task:
 *                               JNI natives registered by the loader)
 *   bench.Echo,handler          handler style: a Function<byte[], byte[]>
 */
package bench;

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

    public static Function<byte[], byte[]> handler(String cfg) {
        return req -> req;
    }
}
