/*
 * Test runtime: the compat style on the loader's own API (resty.ffi.Queue,
 * Task, Log) instead of jnr-ffi. Requests drive the edge cases.
 */
package t;

import java.nio.charset.StandardCharsets;
import resty.ffi.Log;
import resty.ffi.Queue;
import resty.ffi.Task;

public class NativeEcho {
    public static int init(String cfg, long tq) {
        Queue q = Queue.of(tq);
        Thread th = new Thread(() -> serve(q), "native-echo");
        th.setDaemon(true);
        th.start();
        Log.notice("native echo started with cfg=" + cfg);
        return 0;
    }

    static void serve(Queue q) {
        for (Task t; (t = q.poll()) != null; ) {
            byte[] req = t.request();
            String s = req == null ? "<null>" : new String(req, StandardCharsets.UTF_8);
            switch (s) {
                case "nil":
                    t.respond(null);
                    break;
                case "twice":
                    t.respond("first".getBytes());
                    try {
                        t.respond("second".getBytes());
                    } catch (IllegalStateException e) {
                        System.out.println("second respond: " + e.getMessage());
                    }
                    break;
                case "badq":
                    try {
                        Queue.of(12345);
                        t.fail(9, "accepted a bad queue");
                    } catch (IllegalArgumentException e) {
                        t.fail(3, e.getMessage());
                    }
                    break;
                case "fail":
                    t.fail(42, "custom failure");
                    break;
                default:
                    t.respond(req == null ? "<null>".getBytes() : s.toUpperCase().getBytes(StandardCharsets.UTF_8));
            }
        }
        Log.notice("native echo: queue finished, poller exits");
    }
}
