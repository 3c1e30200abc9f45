#!/usr/bin/env bash
# Set-up for the gRPC runtime's tests: Python's grpcio and grpcio-tools
# (from PyPI) for the python3 that runs pytest, which serves helloworld
# from a gRPC implementation nobody here wrote (tests/grpc/helloworld_server.py).
# The tonic servers, certificates (rcgen) and .proto compiler (protox) are
# built by cargo; no protoc binary is needed.
set -euo pipefail
python3 -c 'import grpc, grpc_tools' 2>/dev/null && exit 0
python3 -m pip install -q grpcio grpcio-tools
