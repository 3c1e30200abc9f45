"""A helloworld Greeter served by Python's grpcio (from PyPI): a gRPC
server nobody in this project wrote. Stubs are generated at start with
grpc_tools from examples/grpc/proto/helloworld.proto into a temp folder.

Usage: python3 helloworld_server.py PROTO_DIR; prints `listening on ADDR`.
"""

import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc


def main():
    proto_dir = sys.argv[1]
    out = tempfile.mkdtemp(prefix="grpc-py-")
    rc = protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out,
                      "--grpc_python_out=" + out, proto_dir + "/helloworld.proto"])
    if rc != 0:
        raise SystemExit("protoc failed: %d" % rc)
    sys.path.insert(0, out)
    import helloworld_pb2
    import helloworld_pb2_grpc

    class Greeter(helloworld_pb2_grpc.GreeterServicer):
        def SayHello(self, request, context):
            context.set_trailing_metadata((("x-served-by", "grpcio"),))
            return helloworld_pb2.HelloReply(message="Hello %s from grpcio!" % request.name)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening on 127.0.0.1:%d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
