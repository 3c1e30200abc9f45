"""Echo runtime in lua-resty-ffi's Python style (the "compat" style).

Load it with `ngx.load_ffi("ffi_python3", "/path/to/examples/python/ffi.echo?,init")`.
It talks to the core through cffi and the three ngx_http_lua_ffi_* C
functions only, so the same file runs under lua-resty-ffi unchanged:
`init(cfg, tq)` gets the address of the rest of the cfg string (or 0)
and the task queue's address, starts its own polling threads and returns 0.
cffi comes from Debian's python3-cffi (or any venv the runtime names).
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
# The process's global symbols: libc, and the core (loaded RTLD_GLOBAL).
C = ffi.dlopen(None)


def serve(tq):
    queue = ffi.cast("void *", tq)
    length = ffi.new("int *")
    while True:
        task = C.ngx_http_lua_ffi_task_poll(queue)
        if task == ffi.NULL:  # the queue is finished: rt:__unload()
            break
        req = C.ngx_http_lua_ffi_get_req(task, length)
        n = length[0] if req != ffi.NULL else 0
        # the core frees the answer with free(): hand it malloc()ed bytes,
        # NUL-terminated so an empty answer (length 0) reads as "".
        rsp = ffi.cast("char *", C.malloc(n + 1))
        if n:
            C.memcpy(rsp, req, n)
        rsp[n] = b"\0"
        C.ngx_http_lua_ffi_respond(task, 0, rsp, n)
    print("python echo runtime: queue finished, poller exits")


def init(cfg, tq):
    threads = 2
    if cfg:  # 0 when the cfg has no third field
        text = ffi.string(ffi.cast("char *", cfg)).decode()
        if text.startswith("threads="):
            threads = int(text[len("threads="):])
    for _ in range(threads):
        threading.Thread(target=serve, args=(tq,), daemon=True).start()
    return 0
