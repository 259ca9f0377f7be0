"""A bare grpcio server: only the standard Health service, no interceptors, no mesh.

Run as `python _grpc_floor.py`: it prints its port, then serves until killed. The server
CPU per Health/Check under load is what grpcio itself costs per unary call on this
machine, the floor under any unary call of the mesh's gRPC door (issue 16's gRPC row).
It runs as the mesh does: grpc.aio on uvloop.
"""

from __future__ import annotations

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc


async def _serve() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(_serve())
