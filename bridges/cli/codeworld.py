"""`scillm codeworld run SPEC.json`: run strategies, print runs as JSONL, then the summary.

SPEC.json holds the seed's envelope (see scillm.bridges.seed.codeworld): items,
strategies (or provider.args.strategies), optional judge, limits and MCTS settings,
and optionally "model": "codeworld/mcts" for a search.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf import json_format

from scillm.bridges.seed.codeworld import request_from_envelope, summary_text
from scillm.clients import InvalidRequestError, RPCError, TlsConfig

from ._mesh import LocalMesh, mesh_client
from ._progress import Progress

__all__ = ["run_codeworld"]


def load_spec(spec: Path) -> bytes:
    """The spec file's bytes (read before the event loop starts)."""
    return spec.read_bytes()


async def run_codeworld(spec: Path, raw: bytes, target: str | None, local: LocalMesh,
                        api_key: str | None = None, *, tls: TlsConfig | None = None) -> int:
    """Exit status: 0 when the run completed, whatever the scores; 1 on errors; 2 when the
    spec cannot be read."""
    try:
        body = json.loads(raw)
        request = request_from_envelope(body)
    except (OSError, ValueError, RecursionError) as exc:
        print(f"scillm codeworld: cannot read {spec}: {exc}", file=sys.stderr)
        return 2
    except InvalidRequestError as exc:
        print(f"scillm codeworld: {spec}: {exc.message}", file=sys.stderr)
        return 2
    total = len(request.items) * max(len(request.strategies), 1)
    progress = Progress(total, "runs")
    try:
        async with mesh_client(target, ("codeworld",), local, api_key, tls) as client:
            async for event in client.codeworld.run(request):
                kind = str(event.WhichOneof("event"))
                payload = json_format.MessageToDict(getattr(event, kind),
                                                    preserving_proto_field_name=True)
                print(json.dumps({kind: payload}), flush=True)
                if kind == "run":
                    progress.advance(f"{event.run.task_id}/{event.run.strategy}")
                elif kind == "summary":
                    progress.close()
                    print(summary_text(event.summary), file=sys.stderr)
    except RPCError as exc:
        progress.close()
        print(f"scillm codeworld: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    return 0
