/*
 * An echo runtime in the compat style, written the way lua-resty-ffi's
 * Java runtimes are: init(cfg, tq) starts a thread that calls the core's
 * three C functions itself through jnr-ffi and returns 0. jnr-ffi finds
 * them with LibraryLoader.DEFAULT_LIBRARY (dlopen(NULL)), which works
 * because the core's symbols are global in the worker.
 *
 *   ngx.load_ffi("ffi_java", "demo.echo.App?,init,")
 */
package demo.echo;

import jnr.ffi.LibraryLoader;
import jnr.ffi.Pointer;
import jnr.ffi.Runtime;
import jnr.ffi.byref.IntByReference;

public class App {
    /** The runtime ABI of the core (see README.md, "Writing a runtime"). */
    public interface Core {
        Pointer ngx_http_lua_ffi_task_poll(Pointer tq);

        Pointer ngx_http_lua_ffi_get_req(Pointer task, IntByReference len);

        void ngx_http_lua_ffi_respond(Pointer task, int rc, Pointer rsp, int rspLen);
    }

    /** Answers must be malloc()ed: the core frees them. */
    public interface LibC {
        Pointer malloc(long size);
    }

    public static int init(String cfg, long tq) {
        Core core = LibraryLoader.create(Core.class).load(LibraryLoader.DEFAULT_LIBRARY);
        LibC libc = LibraryLoader.create(LibC.class).load("c");
        Pointer queue = Pointer.wrap(Runtime.getSystemRuntime(), tq);
        Thread poller = new Thread(() -> serve(core, libc, queue), "jnr-echo");
        poller.setDaemon(true);
        poller.start();
        return 0;
    }

    static void serve(Core core, LibC libc, Pointer queue) {
        IntByReference len = new IntByReference();
        Pointer task;
        while ((task = core.ngx_http_lua_ffi_task_poll(queue)) != null) {
            Pointer req = core.ngx_http_lua_ffi_get_req(task, len);
            int n = req == null ? 0 : len.intValue();
            // n + 1 bytes, NUL-terminated: rsp_len 0 then still means ""
            Pointer rsp = libc.malloc(n + 1);
            if (n > 0) {
                rsp.transferFrom(0, req, 0, n);
            }
            rsp.putByte(n, (byte) 0);
            core.ngx_http_lua_ffi_respond(task, 0, rsp, n);
        }
        // NULL: the queue is finished (rt:__unload()); never touch it again
        System.out.println("exit java echo runtime");
    }
}
