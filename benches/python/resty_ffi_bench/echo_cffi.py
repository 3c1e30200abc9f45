"""Echo runtime in lua-resty-ffi's compat style: cffi, one polling thread.

Written the way lua-resty-ffi's Python examples are: the module's
`init(cfg, tq)` starts its own thread, which polls the task queue through
the three ngx_http_lua_ffi_* functions (found with `ffi.dlopen(None)` since
the core is loaded RTLD_GLOBAL) and answers each request with a malloc()ed
copy of itself. Returns 0, so the loader knows it runs its own pollers.
"""

import threading

from cffi import FFI

ffi = FFI()
ffi.cdef("""
void *malloc(size_t size);
void *memcpy(void *dest, const void *src, size_t n);
void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);
""")
C = ffi.dlopen(None)


def _poll(tq):
    tq = ffi.cast("void *", tq)
    lenp = ffi.new("int *")
    while True:
        task = C.ngx_http_lua_ffi_task_poll(tq)
        if task == ffi.NULL:
            break
        req = C.ngx_http_lua_ffi_get_req(task, lenp)
        n = lenp[0]
        rsp = C.malloc(n + 1)
        C.memcpy(rsp, req, n)
        C.ngx_http_lua_ffi_respond(task, 0, ffi.cast("char *", rsp), n)


def init(cfg, tq):
    threading.Thread(target=_poll, args=(tq,), daemon=True,
                     name="bench-echo-cffi").start()
    return 0
