"""A bare gRPC server: only the standard Health service, no interceptors, no mesh.

Run as `python _grpc_floor.py [grpcio|native]`: it prints its port, then serves until
killed. The server CPU per Health/Check under load is what the gRPC server itself costs per
unary call on this machine, the floor under any unary call of the mesh's gRPC door (issue
16's gRPC row): grpc.aio's server (`grpcio`, the default) or pygrpc-native's (`native`,
the mesh's default). Both run as the mesh does, on uvloop.
"""

from __future__ import annotations

import sys

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc


async def _serve(kind: str) -> None:
    if kind == "native":
        import pygrpc_native.aio

        server: grpc.aio.Server = pygrpc_native.aio.server()
    else:
        server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(_serve(sys.argv[1] if len(sys.argv) > 1 else "grpcio"))
