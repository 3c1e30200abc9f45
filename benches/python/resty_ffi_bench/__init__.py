"""Python echo runtimes for resty-ffi's benchmarks (benches/run.py)."""
