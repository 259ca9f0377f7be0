"""`scillm prove batch FILE.jsonl` and `scillm prove run "<statement or file>"`.

A batch file holds one item per line in the seed's form (see scillm.bridges.seed.prove):
`{"item_id", "backend", "statement", "proof", "preamble", "requirement_text",
"smt_solver", ...}`. Results are printed as JSON lines as they finish, then the summary.
`--smt-solver` picks the SMT solver (z3, cvc5, both): `run`'s one item's, `batch`'s for
the smt items that name none; left out, the server's default (z3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from scillm.bridges.seed.prove import request_from_envelope, summary_text
from scillm.clients import InvalidRequestError, RPCError, TlsConfig
from scillm.prove.v1 import prove_pb2 as pb

from ._mesh import LocalMesh, mesh_client
from ._progress import Progress

__all__ = ["SUFFIX_BACKENDS", "batch_envelope", "run_envelope", "run_prove"]

SUFFIX_BACKENDS = {".smt2": "smt", ".smt": "smt", ".v": "coq", ".lean": "lean4"}


def _options(model: str | None, max_seconds: float | None, no_cache: bool,
             smt_solver: str | None = None) -> dict[str, Any]:
    found = {"model": model, "max_seconds": max_seconds, "no_cache": no_cache,
             "smt_solver": smt_solver}
    return {k: v for k, v in found.items() if v}


def batch_envelope(raw: str, *, backend: str | None, model: str | None,
                   max_seconds: float | None, no_cache: bool = False,
                   smt_solver: str | None = None) -> dict[str, Any]:
    """The envelope of a JSONL batch; ValueError names the bad line. `smt_solver` is for
    the smt items that name none (`options.smt_solver`); unset, the server's (z3)."""
    items = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: not JSON ({exc})") from None
    if not items:  # else the envelope's own words ('items' must be a non-empty array)
        raise ValueError("no items: every line is empty (one JSON item per line)")
    return {"model": f"certainly/{backend or ''}".rstrip("/"), "items": items,
            "options": _options(model, max_seconds, no_cache, smt_solver)}


def run_envelope(target: str, *, backend: str | None, proof: str, preamble: str,
                 model: str | None, max_seconds: float | None,
                 no_cache: bool = False, smt_solver: str | None = None) -> dict[str, Any]:
    """The envelope of one statement, or of a source file (backend from its suffix).
    `smt_solver` is the item's, and makes it an smt item (ValueError for another
    backend); unset, the server's (z3)."""
    path = Path(target)
    if not path.is_file() and (path.suffix in SUFFIX_BACKENDS or path.is_dir()):
        # A file name that is no file was checked as a statement (FAILED, exit 3).
        raise ValueError(f"cannot read {target}: "
                         f"{'a directory' if path.is_dir() else 'no such file'}")
    item: dict[str, Any] = {"item_id": path.name if path.is_file() else "statement"}
    if path.is_file():
        backend = backend or SUFFIX_BACKENDS.get(path.suffix)
        text = path.read_text(encoding="utf-8-sig")  # a BOM is not Coq
        item["proof" if backend in ("coq", "lean4") else "statement"] = text
    else:
        item["statement"] = target
        item["proof"] = proof
    if smt_solver:
        if backend not in (None, "smt"):
            raise ValueError(f"--smt-solver is for the smt backend; this item's backend is "
                             f"{backend}")
        backend = "smt"
        item["smt_solver"] = smt_solver
    item["preamble"] = preamble
    return {"model": f"certainly/{backend or ''}".rstrip("/"), "items": [item],
            "options": _options(model, max_seconds, no_cache)}


async def run_prove(envelope: dict[str, Any], target: str | None, local: LocalMesh, *,
                    single: bool, api_key: str | None = None,
                    tls: TlsConfig | None = None) -> int:
    """Batch: exit 0 when every item was checked, 1 on errors. Single: 0 when proved,
    3 when checked and not proved, 1 on errors. Both: 2 when the input cannot be read."""
    try:
        request = request_from_envelope(envelope)
    except InvalidRequestError as exc:
        print(f"scillm prove: {exc.message}", file=sys.stderr)
        return 2
    progress = Progress(len(request.items), "items")
    errors = 0
    proved = 0
    try:
        async with mesh_client(target, ("prove",), local, api_key, tls) as client:
            async for event in client.prove.prove(request):
                kind = str(event.WhichOneof("event"))
                body = getattr(event, kind)
                print(json.dumps({kind: json_format.MessageToDict(
                    body, preserving_proto_field_name=True)}), flush=True)
                if kind == "result":
                    errors += body.verdict == pb.VERDICT_ERROR
                    proved += body.verdict == pb.VERDICT_PROVED
                    vacuous = " (vacuous)" if body.vacuous else ""
                    progress.advance(
                        f"{body.item_id}: {pb.Verdict.Name(body.verdict)[8:]}{vacuous}")
                else:
                    progress.close()
                    print(summary_text(body), file=sys.stderr)
    except RPCError as exc:
        progress.close()
        print(f"scillm prove: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    if single:
        return 1 if errors else (0 if proved else 3)
    return 1 if errors else 0
