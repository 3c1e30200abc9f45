module github.com/resty-ffi/tests/go/tasks

go 1.21
