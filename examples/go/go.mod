module github.com/resty-ffi/examples/go

go 1.21
