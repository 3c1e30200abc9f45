// Go streaming runtime for resty-ffi: answers a call in chunks through the
// core's resty_ffi_respond_chunk, as a token stream or an export would.
//
// Build: go build -buildmode=c-shared -o libffi_go_stream.so stream.go
//
// Request "N:MS:text" answers N chunks "i:text\n", MS ms apart, then ends
// the call. From Lua read it with rt:__stream(req) and st:recv(); a plain
// call (rt:call(req)) gets all chunks joined. When the reader goes away
// (stream closed, client gone, timeout) respond_chunk returns 1: the
// goroutine stops producing, logs how far it got and ends the task.
//
// respond_chunk blocks while the reader is a window behind, so a slow
// client holds this goroutine back instead of growing memory. It is a
// resty-ffi extension: this runtime needs resty-ffi's core (lua-resty-ffi
// has no streaming).
package main

/*
#cgo LDFLAGS: -shared
#include <stdlib.h>
#include <string.h>
void* ngx_http_lua_ffi_task_poll(void *p);
char* ngx_http_lua_ffi_get_req(void *tsk, int *len);
void ngx_http_lua_ffi_respond(void *tsk, int rc, char* rsp, int rsp_len);
int resty_ffi_respond_chunk(void *tsk, const char *data, int len);
void resty_ffi_log(int level, const char *msg, int len);
*/
import "C"

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

const ngxNotice = 6

func logLine(msg string) {
	b := []byte(msg)
	C.resty_ffi_log(ngxNotice, (*C.char)(unsafe.Pointer(&b[0])), C.int(len(b)))
}

// chunk sends one chunk; false once nobody reads any more.
func chunk(task unsafe.Pointer, s string) bool {
	b := []byte(s)
	return C.resty_ffi_respond_chunk(task, (*C.char)(unsafe.Pointer(&b[0])), C.int(len(b))) == 0
}

func end(task unsafe.Pointer, rc int, msg string) {
	rsp := C.CString(msg)
	C.ngx_http_lua_ffi_respond(task, C.int(rc), rsp, 0)
}

func serve(task unsafe.Pointer) {
	var n C.int
	req := C.GoStringN(C.ngx_http_lua_ffi_get_req(task, &n), n)
	parts := strings.SplitN(req, ":", 3)
	if len(parts) != 3 {
		end(task, 2, "request must be N:MS:text")
		return
	}
	count, err1 := strconv.Atoi(parts[0])
	ms, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || count < 0 || ms < 0 {
		end(task, 2, "N and MS must be non-negative integers")
		return
	}
	for i := 1; i <= count; i++ {
		if ms > 0 {
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		if !chunk(task, fmt.Sprintf("%d:%s\n", i, parts[2])) {
			logLine(fmt.Sprintf("go stream: reader gone after %d of %d chunks", i-1, count))
			end(task, 1, "cancelled")
			return
		}
	}
	end(task, 0, "")
}

//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	go func() {
		for {
			task := C.ngx_http_lua_ffi_task_poll(tq)
			if task == nil {
				return
			}
			go serve(task)
		}
	}()
	return 0
}

func main() {}
