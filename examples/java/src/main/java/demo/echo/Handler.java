/*
 * The echo runtime in the handler style: no jar of ours, no poll loop.
 * The loader sees the return type, polls the queue and calls the function
 * per request; cfg (the rest of the load_ffi string) is a prefix.
 *
 *   ngx.load_ffi("ffi_java", "demo.echo.Handler,echo,echo: ")
 *   ngx.load_ffi("ffi_java", "demo.echo.Handler,echoAsync,")
 */
package demo.echo;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.function.Function;

public class Handler {
    static byte[] concat(String prefix, byte[] req) {
        byte[] p = prefix == null ? new byte[0] : prefix.getBytes(StandardCharsets.UTF_8);
        byte[] r = req == null ? new byte[0] : req;
        byte[] out = new byte[p.length + r.length];
        System.arraycopy(p, 0, out, 0, p.length);
        System.arraycopy(r, 0, out, p.length, r.length);
        return out;
    }

    public static Function<byte[], byte[]> echo(String cfg) {
        return req -> concat(cfg, req);
    }

    public static Function<byte[], CompletionStage<byte[]>> echoAsync(String cfg) {
        return req -> CompletableFuture.completedFuture(concat(cfg, req));
    }
}
