// Go echo runtime for resty-ffi, written exactly as lua-resty-ffi's Go
// runtimes are: it uses only the three ngx_http_lua_ffi_* functions, so the
// same library loads unchanged under lua-resty-ffi and under resty-ffi.
//
// Build: go build -buildmode=c-shared -o libffi_go_echo.so echo.go
//
// Requests: plain bytes are echoed; "upper:<text>" answers the text in
// upper case; "fail:<text>" answers rc=2 with the text, so callers can see
// an error travel back.
package main

/*
#cgo LDFLAGS: -shared
#include <stdlib.h>
#include <string.h>
void* ngx_http_lua_ffi_task_poll(void *p);
char* ngx_http_lua_ffi_get_req(void *tsk, int *len);
void ngx_http_lua_ffi_respond(void *tsk, int rc, char* rsp, int rsp_len);
*/
import "C"

import (
	"bytes"
	"log"
	"unsafe"
)

// respond hands a malloc()ed copy of body to the core, which frees it.
func respond(task unsafe.Pointer, rc int, body []byte) {
	rsp := C.malloc(C.size_t(len(body) + 1))
	if len(body) > 0 {
		C.memcpy(rsp, unsafe.Pointer(&body[0]), C.size_t(len(body)))
	}
	C.ngx_http_lua_ffi_respond(task, C.int(rc), (*C.char)(rsp), C.int(len(body)))
}

func serve(task unsafe.Pointer) {
	var n C.int
	req := C.ngx_http_lua_ffi_get_req(task, &n)
	// A view of the request, not a copy: the bytes stay valid and unchanged
	// until we respond, and we copy them once, into the malloc()ed answer.
	var body []byte
	if req != nil && n > 0 {
		body = unsafe.Slice((*byte)(unsafe.Pointer(req)), int(n))
	}
	switch {
	case bytes.HasPrefix(body, []byte("upper:")):
		respond(task, 0, bytes.ToUpper(body[len("upper:"):]))
	case bytes.HasPrefix(body, []byte("fail:")):
		respond(task, 2, body[len("fail:"):])
	default:
		respond(task, 0, body)
	}
}

//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	go func() {
		for {
			task := C.ngx_http_lua_ffi_task_poll(tq)
			if task == nil {
				break
			}
			serve(task)
		}
		log.Println("go echo runtime: queue finished, exiting")
	}()
	return 0
}

func main() {}
