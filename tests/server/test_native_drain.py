"""A graceful stop on the native gRPC server lets a call that finished in the grace reach
its caller (server/native_server.py).

The caller here is a raw HTTP/2 client (the `h2` package) that opens its stream with a
16-byte window: the mesh's handler answers at once, but the front can send the reply only
as the caller opens the window. That holds the end of the call in the front, where
pygrpc-native's own stop would close the connection on it, for as long as the test
likes, on any machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import openai_wire
from scillm.completion.v1 import completion_pb2 as pb

ECHO = {"model": "echo/x", "messages": [{"role": "user", "content": "one two three"}]}
METHOD = "/scillm.completion.v1.CompletionService/Completion"


@dataclass
class TightCaller:
    """One unary call over a connection whose stream window is 16 bytes until `open()`."""

    sock: socket.socket
    conn: h2.connection.H2Connection
    stream_id: int = 0
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    goaway: bool = False
    ended: bool = False

    @classmethod
    def call(cls, target: str, message: bytes) -> TightCaller:
        host, port = target.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=30)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                   header_encoding=None))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
        caller = cls(sock, conn, conn.get_next_available_stream_id())
        conn.send_headers(caller.stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", METHOD),
            (":authority", target), ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(caller.stream_id, b"\0" + len(message).to_bytes(4, "big") + message,
                       end_stream=True)
        sock.sendall(conn.data_to_send())
        return caller

    def read(self, until: float) -> None:
        """Take what the server sends, until the stream ends, the connection goes, or
        `until` (monotonic) passes."""
        while not self.ended and not self.goaway and time.monotonic() < until:
            self.sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            if not data:
                self.goaway = True
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.body += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    self.trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = True
            self.sock.sendall(self.conn.data_to_send())

    def open(self) -> None:
        """Let the server send the rest of the reply."""
        self.conn.increment_flow_control_window(1 << 20, stream_id=self.stream_id)
        self.conn.increment_flow_control_window(1 << 20)
        self.sock.sendall(self.conn.data_to_send())

    def reply(self) -> pb.CompletionResponse:
        assert self.trailers.get(b"grpc-status") == b"0", self.trailers
        size = int.from_bytes(self.body[1:5], "big")
        assert len(self.body) == 5 + size
        return pb.CompletionResponse.FromString(bytes(self.body[5:]))


def _answered(running: RunningMesh) -> float:
    return running.mesh.metrics.registry.get_sample_value(
        "scillm_rpc_requests_total",
        {"method": "CompletionService/Completion", "model": "echo/x", "code": "OK"}) or 0.0


@pytest.fixture
def held_reply(tmp_path: Path) -> Iterator[tuple[RunningMesh, TightCaller]]:
    """A mesh on the native server whose Completion handler has answered a caller that has
    received 16 bytes of the reply so far."""
    running = start_mesh(mesh_settings(tmp_path, http_enabled=False, services=("completion",)))
    caller = TightCaller.call(running.grpc_target,
                              openai_wire.request_to_proto(ECHO).SerializeToString())
    try:
        deadline = time.monotonic() + 30
        while _answered(running) < 1 and time.monotonic() < deadline:
            caller.read(time.monotonic() + 0.05)
        assert _answered(running) == 1, "the handler never answered"
        caller.read(time.monotonic() + 0.2)
        assert not caller.ended and len(caller.body) <= 16
        yield running, caller
    finally:
        caller.sock.close()


def _stop_in_thread(running: RunningMesh, grace: float) -> threading.Thread:
    thread = threading.Thread(target=running.stop, args=(grace,), daemon=True)
    thread.start()
    return thread


def test_a_stop_waits_for_a_finished_call_to_reach_its_caller(
        held_reply: tuple[RunningMesh, TightCaller]) -> None:
    running, caller = held_reply
    stopping = _stop_in_thread(running, 20.0)
    # The library would close the connection now; the caller must still be owed its reply.
    caller.read(time.monotonic() + 1.0)
    assert stopping.is_alive() and not caller.goaway
    caller.open()
    caller.read(time.monotonic() + 20)
    assert caller.ended and not caller.goaway
    assert caller.reply().choices[0].message.content[0].text == "one two three"
    stopping.join(timeout=20)
    assert not stopping.is_alive()


def test_a_caller_that_never_reads_does_not_hold_the_stop_past_its_grace(
        held_reply: tuple[RunningMesh, TightCaller]) -> None:
    running, caller = held_reply
    started = time.monotonic()
    stopping = _stop_in_thread(running, 0.5)
    stopping.join(timeout=25)
    assert not stopping.is_alive(), "the stop waited past its grace"
    caller.read(time.monotonic() + 5)
    assert caller.goaway and not caller.ended
    assert time.monotonic() - started >= 0.5
