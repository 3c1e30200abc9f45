// A Go runtime written the way lua-resty-ffi's Go runtimes are in the wild
// (lua-resty-ffi-req, -etcd, -kafka), to test that the core's task handles
// survive what Go does to the pointers it holds:
//
//   - one goroutine polls and hands every task to a goroutine of its own;
//   - in-flight tasks are kept as unsafe.Pointer in a map and travel through
//     a channel, so the garbage collector scans them on heap and stacks;
//   - between poll and respond each task's goroutine grows its stack
//     (recursion with large frames makes Go copy the stack, adjusting every
//     pointer on it) and, every few tasks, forces a garbage collection.
//
// Go aborts the process ("invalid pointer found on stack", "bad pointer in
// frame") when a value it keeps as a pointer is below 4096 or points into
// its heap where no object lives. Run with GODEBUG at its defaults
// (invalidptr=1) and with GODEBUG=gccheckmark=1.
//
// Build: go build -buildmode=c-shared -o libffi_go_tasks.so .
//
// Requests: "<text>" answers "<text>|<depth sum>|<handle>", where the sum
// proves the recursion ran and the handle is the task pointer as Go saw it
// (printed with %p). "depth:<n>:<text>" recurses n frames (default 64).
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
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"
)

type answer struct {
	id   uint64
	body []byte
}

type runtimeState struct {
	mu       sync.Mutex
	inflight map[uint64]unsafe.Pointer
	answers  chan answer
	seq      atomic.Uint64
}

// grow recurses n frames of about 1 KiB each, holding task on every frame
// so the stack copier must adjust (and check) it at each growth.
func grow(task unsafe.Pointer, n int) uint64 {
	var pad [128]uint64
	pad[n%128] = uint64(n)
	if n == 0 {
		if task == nil {
			return 0
		}
		return 1
	}
	return pad[n%128] + grow(task, n-1)
}

func (s *runtimeState) serve(id uint64, task unsafe.Pointer) {
	var n C.int
	req := C.ngx_http_lua_ffi_get_req(task, &n)
	body := C.GoBytes(unsafe.Pointer(req), n)
	depth := 64
	if bytes.HasPrefix(body, []byte("depth:")) {
		rest := body[len("depth:"):]
		if i := bytes.IndexByte(rest, ':'); i > 0 {
			if d, err := strconv.Atoi(string(rest[:i])); err == nil && d >= 0 && d <= 100000 {
				depth = d
			}
			body = rest[i+1:]
		}
	}
	sum := grow(task, depth)
	if id%8 == 0 {
		runtime.GC()
	}
	out := fmt.Sprintf("%s|%d|%p", body, sum, task)
	s.answers <- answer{id: id, body: []byte(out)}
}

// respond answers in the order answers arrive, finding each task in the map.
func (s *runtimeState) respond() {
	for a := range s.answers {
		s.mu.Lock()
		task := s.inflight[a.id]
		delete(s.inflight, a.id)
		s.mu.Unlock()
		rsp := C.malloc(C.size_t(len(a.body)))
		C.memcpy(rsp, unsafe.Pointer(&a.body[0]), C.size_t(len(a.body)))
		C.ngx_http_lua_ffi_respond(task, 0, (*C.char)(rsp), C.int(len(a.body)))
	}
}

func (s *runtimeState) poll(tq unsafe.Pointer) {
	for {
		task := C.ngx_http_lua_ffi_task_poll(tq)
		if task == nil {
			close(s.answers)
			return
		}
		id := s.seq.Add(1)
		s.mu.Lock()
		s.inflight[id] = task
		s.mu.Unlock()
		go s.serve(id, task)
	}
}

//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	s := &runtimeState{
		inflight: make(map[uint64]unsafe.Pointer),
		answers:  make(chan answer, 64),
	}
	go s.respond()
	go s.poll(tq)
	return 0
}

func main() {}
