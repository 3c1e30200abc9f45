/*
 * Test runtime (JDK 22+): the compat style calling the core's three C
 * functions through the JDK's FFM API, found process-wide with
 * dlsym(RTLD_DEFAULT, ...) because the core's symbols are global.
 * A request "chunks:a,b,c" is answered in chunks through the core's
 * resty_ffi_respond_chunk (found the same way), then "ffm: end".
 */
package ffm;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

public class Echo {
    static final Linker LINKER = Linker.nativeLinker();

    static MethodHandle global(MethodHandle dlsym, String name, FunctionDescriptor fd) throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment sym = (MemorySegment) dlsym.invoke(MemorySegment.NULL, a.allocateFrom(name));
            if (sym.address() == 0) {
                throw new IllegalStateException(name + " is not a global symbol");
            }
            return LINKER.downcallHandle(sym, fd);
        }
    }

    public static int init(String cfg, long tq) throws Throwable {
        MethodHandle dlsym = LINKER.downcallHandle(LINKER.defaultLookup().find("dlsym").orElseThrow(),
                FunctionDescriptor.of(ADDRESS, ADDRESS, ADDRESS));
        MethodHandle malloc = LINKER.downcallHandle(LINKER.defaultLookup().find("malloc").orElseThrow(),
                FunctionDescriptor.of(ADDRESS, JAVA_LONG));
        MethodHandle poll = global(dlsym, "ngx_http_lua_ffi_task_poll", FunctionDescriptor.of(ADDRESS, ADDRESS));
        MethodHandle getReq = global(dlsym, "ngx_http_lua_ffi_get_req",
                FunctionDescriptor.of(ADDRESS, ADDRESS, ADDRESS));
        MethodHandle respond = global(dlsym, "ngx_http_lua_ffi_respond",
                FunctionDescriptor.ofVoid(ADDRESS, JAVA_INT, ADDRESS, JAVA_INT));
        MethodHandle chunk = global(dlsym, "resty_ffi_respond_chunk",
                FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_INT));
        Thread t = new Thread(() -> {
            MemorySegment q = MemorySegment.ofAddress(tq);
            try (Arena a = Arena.ofConfined()) {
                MemorySegment lenp = a.allocate(JAVA_INT);
                while (true) {
                    MemorySegment task = (MemorySegment) poll.invoke(q);
                    if (task.address() == 0) {
                        break;
                    }
                    MemorySegment req = (MemorySegment) getReq.invoke(task, lenp);
                    int len = lenp.get(JAVA_INT, 0);
                    String text = len > 0 ? new String(req.reinterpret(len).toArray(JAVA_BYTE)) : "";
                    if (text.startsWith("chunks:")) {
                        for (String part : text.substring(7).split(",")) {
                            MemorySegment c = a.allocateFrom(part);
                            if ((int) chunk.invoke(task, c, part.length()) != 0) {
                                break;
                            }
                        }
                        MemorySegment end = ((MemorySegment) malloc.invoke(9L)).reinterpret(9);
                        MemorySegment.copy(MemorySegment.ofArray("ffm: end\0".getBytes()), 0, end, 0, 9);
                        respond.invoke(task, 0, end, 8);
                        continue;
                    }
                    MemorySegment rsp = ((MemorySegment) malloc.invoke((long) len + 6)).reinterpret(len + 6);
                    MemorySegment.copy(MemorySegment.ofArray("ffm: ".getBytes()), 0, rsp, 0, 5);
                    if (len > 0) {
                        MemorySegment.copy(req.reinterpret(len), 0, rsp, 5, len);
                    }
                    rsp.set(JAVA_BYTE, len + 5, (byte) 0);
                    respond.invoke(task, 0, rsp, len + 5);
                }
            } catch (Throwable e) {
                e.printStackTrace();
            }
            System.out.println("ffm echo: queue finished");
        }, "ffm-echo");
        t.setDaemon(true);
        t.start();
        return 0;
    }
}
