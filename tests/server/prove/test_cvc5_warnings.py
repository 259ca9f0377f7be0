"""What cvc5 1.0.3 prints that is neither an answer, an error nor a model: its warnings,
on the real cvc5 in the jail (Debian 12's 1.0.3, which scripts/install brings).

cvc5 writes warnings on its standard error, which the worker reads merged with its
standard output. Recorded from cvc5 1.0.3 (`--lang smt2 --incremental --produce-models
--produce-assertions --no-filesystem-access`):

* while it reads a command, `<stdin>:L.C: warning: <message>`, L a line of its standard
  input counted from 0, C the column where its reader stands (just past what it warns
  about), e.g. `<stdin>:2.25: warning: Attribute ':bar' not supported (ignoring this and
  all following uses)` (once per process and attribute) or `... warning: symbol `a' bound
  multiple times by let; the last binding will be used, shadowing earlier ones`;
* while it builds the model that `(get-model)` prints, one line before the model:
  `The model was computed to have strings of length 100000. Based on the current value of
  option --strings-model-max-len, we only allow strings up to length 65536` (a string
  longer than 2^16 in a model).

A REFUTED item's counterexample is the model alone; the warnings are diagnostics, located
in the item's source when cvc5 says where.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from scillm.clients import ScillmClient
from scillm.prove.v1 import prove_pb2 as pb
from scillm.prove.v1 import prove_pb2_grpc
from scillm.server.completion_link import CompletionLink
from scillm.server.interceptors import build_interceptors
from scillm.server.jail import Jail, JailSettings
from scillm.server.prove import (
    Diagnostic,
    Limits,
    ProveEngine,
    ProveSettings,
    Verdict,
)
from scillm.server.prove._cvc5 import Cvc5Worker
from scillm.server.prove._smtlib import pose
from scillm.server.prove.servicer import ERRORS, ProveServicer
from scillm.server.settings import Settings

LONG = ("The model was computed to have strings of length 100000. Based on the current value "
        "of option --strings-model-max-len, we only allow strings up to length 65536")
#: cvc5 1.0.3's model of a string of 100,000 characters: a witness, not a literal.
LONG_MODEL = ("(\n(define-fun s () String (witness ((s String)) (! (= (str.len s) 100000) "
              ":qid w0) ))\n)")


@pytest.fixture
async def jail() -> AsyncIterator[Jail]:
    jail = await Jail.probe(JailSettings())
    yield jail
    jail.release()


@pytest.fixture
async def worker(jail: Jail) -> AsyncIterator[Cvc5Worker]:
    """A fresh cvc5: it warns of an unsupported attribute once per process."""
    cvc5 = await Cvc5Worker.start("cvc5", 512, jail)
    yield cvc5
    await cvc5.kill()


async def test_a_warning_while_building_the_model_is_not_the_counterexample(
        worker: Cvc5Worker) -> None:
    """cvc5 warns of a string longer than 2^16 while it builds the model: that line came
    first in the counterexample, as if it were part of the model."""
    for _ in range(2):  # and again on the same warm worker: it warns each time
        got = await worker.run(pose("(declare-const s String)", "(< (str.len s) 100000)"),
                               Limits(timeout_s=60))
        assert (got.verdict, got.counterexample) == (Verdict.REFUTED, LONG_MODEL)
        assert got.diagnostics == (Diagnostic("warning", LONG),)


async def test_warnings_while_reading_are_located_in_the_items_source(
        worker: Cvc5Worker) -> None:
    """cvc5 says where it was reading, in lines of its whole standard input: the warning
    is placed on the item's own line, without cvc5's stream position."""
    await worker.run(pose("", "(= 1 1)"), Limits(timeout_s=30))  # stream lines of its own
    preamble = "(declare-const x Int)\n(assert (! (> x 0) :bar 3))"
    got = await worker.run(pose(preamble, "(let ((a 1) (a 2)) (> x a))"), Limits(timeout_s=30))
    assert got.verdict is Verdict.REFUTED
    assert got.counterexample == "(\n(define-fun x () Int 1)\n)"
    attribute, binding = got.diagnostics
    assert attribute == Diagnostic(
        "warning", "Attribute ':bar' not supported (ignoring this and all following uses)",
        2, 25, 2, 26)
    assert got.source.splitlines()[1][:25].endswith(":bar 3")
    assert binding == Diagnostic(
        "warning", "symbol `a' bound multiple times by let; the last binding will be used, "
        "shadowing earlier ones", 3, 30, 3, 31)
    assert got.source.splitlines()[2][:30].endswith("(a 2)")


async def test_through_prove_service_the_model_and_the_warning_are_apart(
        tmp_path: Path) -> None:
    """On a real gRPC server (127.0.0.1:0): the item's counterexample, and cvc5's own in
    `solver_verdicts`, are the model alone; the warning is a diagnostic."""
    engine = ProveEngine(ProveSettings(scratch_dir=tmp_path))
    await engine.start()
    server = grpc.aio.server(interceptors=build_interceptors(Settings(), ERRORS, False))
    prove_pb2_grpc.add_ProveServiceServicer_to_server(
        ProveServicer(engine, CompletionLink(lambda: "127.0.0.1:1")), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with ScillmClient(f"127.0.0.1:{port}") as client:
            events = [e async for e in client.prove.prove(pb.ProveRequest(
                no_cache=True, limits=pb.Limits(timeout=Duration(seconds=60)),
                items=[pb.Obligation(item_id="long", backend=pb.BACKEND_SMT,
                                     smt_solver=pb.SMT_SOLVER_CVC5,
                                     preamble="(declare-const s String)",
                                     statement="(< (str.len s) 100000)")]))]
    finally:
        await server.stop(None)
        await engine.close()
    result = events[0].result
    assert (result.verdict, result.counterexample) == (pb.VERDICT_REFUTED, LONG_MODEL)
    assert [v.counterexample for v in result.solver_verdicts] == [LONG_MODEL]
    assert [(d.severity, d.message, d.line) for d in result.diagnostics] == [
        (pb.SEVERITY_WARNING, LONG, 0)]
