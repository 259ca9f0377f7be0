"""Prove through its doors: gRPC batches with real z3 and coqc, the certainly/ model name,
the seed envelope, and the formalize loop driven by a scripted model."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import RunningMesh, ServedProcess, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.clients import RPCError, ScillmClient
from scillm.prove.v1 import prove_pb2 as pb

COQ_TRUE = ("Theorem add_0 : forall n : nat, n + 0 = n.",
            "Proof. intros n. induction n; simpl; auto. Qed.")


def _batch() -> pb.ProveRequest:
    req = pb.ProveRequest(items=[
        pb.Obligation(item_id="smt-true", backend=pb.BACKEND_SMT,
                      preamble="(declare-const x Int)", statement="(> (+ x 1) x)"),
        pb.Obligation(item_id="smt-false", backend=pb.BACKEND_SMT,
                      preamble="(declare-const x Int)", statement="(> x 5)"),
        pb.Obligation(item_id="coq-true", backend=pb.BACKEND_COQ, statement=COQ_TRUE[0],
                      proof=COQ_TRUE[1], metadata={"k": "v"}),
        pb.Obligation(item_id="coq-admitted", backend=pb.BACKEND_COQ,
                      statement="Theorem bad : 1 = 2.", proof="Proof. Admitted."),
        pb.Obligation(item_id="coq-broken", backend=pb.BACKEND_COQ,
                      statement="Theorem t : True.", proof="Proof.\n  exact I I.\nQed."),
    ])
    req.context.session_id = "proofs"
    return req


async def test_batch_streams_verdicts_then_summary(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.prove.prove(_batch())]
    assert events[-1].HasField("summary")
    results = {e.result.item_id: e.result for e in events[:-1]}
    assert set(results) == {"smt-true", "smt-false", "coq-true", "coq-admitted", "coq-broken"}
    assert results["smt-true"].verdict == pb.VERDICT_PROVED
    assert results["smt-false"].verdict == pb.VERDICT_REFUTED
    assert "x" in results["smt-false"].counterexample
    assert results["coq-true"].verdict == pb.VERDICT_PROVED
    assert results["coq-true"].metadata["k"] == "v"
    assert results["coq-true"].backend_version
    assert results["coq-admitted"].verdict == pb.VERDICT_FAILED
    broken = results["coq-broken"]
    assert broken.verdict == pb.VERDICT_FAILED and broken.diagnostics
    d = broken.diagnostics[0]
    line = broken.source.splitlines()[d.line - 1]
    assert "exact I I" in line and d.column >= 1
    summary = events[-1].summary
    assert (summary.items, summary.proved, summary.refuted, summary.failed) == (5, 2, 1, 2)
    assert summary.manifest.service == "prove" and summary.manifest.session_id == "proofs"
    assert set(summary.manifest.item_ids) == set(results)


async def test_backends_report_lean_unavailable(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.prove.backends()
    info = {b.backend: b for b in reply.backends}
    assert info[pb.BACKEND_SMT].available and info[pb.BACKEND_COQ].available
    assert not info[pb.BACKEND_LEAN4].available and info[pb.BACKEND_LEAN4].reason
    assert {b.isolation for b in reply.backends} == {"bubblewrap"}
    async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for backend, expected in (("smt", health_pb2.HealthCheckResponse.SERVING),
                                  ("coq", health_pb2.HealthCheckResponse.SERVING),
                                  ("bubblewrap", health_pb2.HealthCheckResponse.SERVING),
                                  ("lean4", health_pb2.HealthCheckResponse.NOT_SERVING)):
            reply = await health.Check(health_pb2.HealthCheckRequest(
                service=f"scillm.prove.v1.ProveService/{backend}"))
            assert reply.status == expected, backend


async def test_prove_is_not_serving_without_a_prover(tmp_path: Path) -> None:
    """`scillm serve --service prove` on a host where no prover is on PATH: it serves, its
    health entry says NOT_SERVING (README: SERVING only with at least one prover), every
    backend says why, and a batch gets FAILED_PRECONDITION naming the missing prover."""
    empty = tmp_path / "bin"
    empty.mkdir()
    served = ServedProcess("prove", ["--service", "prove", "--no-http", "--grpc-port", "0"],
                           {"PATH": str(empty), "HOME": str(tmp_path),
                            "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3")},
                           tmp_path / "prove.log")
    try:
        served.wait_ready()
        async with grpc.aio.insecure_channel(served.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for entry in ("", "/smt", "/coq", "/lean4"):
                reply = await health.Check(health_pb2.HealthCheckRequest(
                    service=f"scillm.prove.v1.ProveService{entry}"))
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING, entry
        async with ScillmClient(served.grpc_target) as client:
            listed = await client.prove.backends()
            reasons = {pb.Backend.Name(b.backend): (b.available, b.reason)
                       for b in listed.backends}
            assert reasons == {"BACKEND_SMT": (False, "'z3' is not on PATH"),
                               "BACKEND_COQ": (False, "'coqc' is not on PATH"),
                               "BACKEND_LEAN4": (False, "'lean' is not on PATH")}
            with pytest.raises(RPCError) as info:
                [e async for e in client.prove.prove(pb.ProveRequest(items=[pb.Obligation(
                    item_id="one", backend=pb.BACKEND_SMT, statement="(> 1 0)")]))]
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "backend 'smt' is unavailable: 'z3' is not on PATH" in info.value.message
    finally:
        served.stop()


async def test_unknown_backend_number_is_invalid(mesh: RunningMesh) -> None:
    request = pb.ProveRequest(items=[pb.Obligation(item_id="x", statement="(> 1 0)")])
    request.items[0].backend = 42  # type: ignore[assignment]
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.prove.prove(request)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "items[0].backend"


async def test_stored_run_keeps_every_item_result(mesh: RunningMesh) -> None:
    from scillm.server.manifests import open_run_store

    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.prove.prove(_batch())]
    store = open_run_store(mesh.mesh.settings.store_path)
    stored = store.get(events[-1].summary.manifest.run_id)
    assert stored is not None and len(stored.events) == 5
    assert {e["item_id"] for e in stored.events} == {r.result.item_id for r in events[:-1]}


@pytest.mark.parametrize(("request_", "code"), [
    (pb.ProveRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.ProveRequest(items=[pb.Obligation(item_id="e", backend=pb.BACKEND_SMT)]),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.ProveRequest(items=[pb.Obligation(item_id="big", backend=pb.BACKEND_SMT,
                                          statement="(> 1 0)" + " " * 2_000_000)]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
    (pb.ProveRequest(items=[pb.Obligation(item_id="l", backend=pb.BACKEND_LEAN4,
                                          statement="theorem t : True := trivial")]),
     grpc.StatusCode.FAILED_PRECONDITION),
])
async def test_bad_batches_get_typed_errors(mesh: RunningMesh, request_: pb.ProveRequest,
                                            code: grpc.StatusCode) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.prove.prove(request_)]
    assert info.value.code == code, info.value.message


def test_certainly_model_through_the_shim(mesh: RunningMesh) -> None:
    sdk = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0)
    reply = sdk.chat.completions.create(
        model="certainly/smt", messages=[{"role": "user", "content": "check these"}],
        extra_body={"items": [
            {"item_id": "a", "preamble": "(declare-const y Int)", "statement": "(= y y)"},
            {"item_id": "b", "preamble": "(declare-const y Int)", "statement": "(= y 1)"}],
            "options": {"session_id": "s", "track_id": "t", "max_seconds": 10}})
    assert reply.choices[0].message.content == \
        "Certainly: 2 items, 1 proved, 1 failed (1 refuted), 0 unproved"
    result = (reply.model_extra or {})["scillm"]["result"]
    assert result["manifest"]["track"] == "t"


def test_bridge_complete_and_unknown_backend(mesh: RunningMesh) -> None:
    ok = httpx.post(f"{mesh.http_url}/bridge/complete", timeout=60, json={
        "messages": [], "items": [{"backend": "coq", "statement": COQ_TRUE[0],
                                   "proof": COQ_TRUE[1]}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"].startswith("Certainly: 1 items, 1 proved")
    bad = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=30, json={
        "model": "certainly/isabelle", "messages": [{"role": "user", "content": "x"}],
        "items": [{"statement": "x"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"


def _prover_mesh(tmp_path: Path, replies: list[str],
                 hold: Callable[[dict[str, Any]], bool] | None = None,
                 **settings: Any) -> tuple[ScriptedUpstream, RunningMesh]:
    """A scripted model `prover` answering `replies` in turn (a request for which `hold` is
    true only once released), and a mesh (Completion and Prove, no HTTP) whose formalize
    loop calls it."""
    upstream = ScriptedUpstream([{"content": text} for text in replies], hold=hold).start()
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "prover", "litellm_params": {
        "model": "openai/prover", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, http_enabled=False,
                                       services=("completion", "prove"), **settings))
    return upstream, running


def test_formalize_loop_repairs_with_a_scripted_model(tmp_path: Path) -> None:
    wrong = "```coq\nTheorem add_0 : forall n : nat, n + 0 = n.\nProof. reflexivity. Qed.\n```"
    right = "```coq\n" + "\n".join(COQ_TRUE) + "\n```"
    upstream, running = _prover_mesh(tmp_path, [wrong, right])
    try:
        request = pb.ProveRequest(
            items=[pb.Obligation(item_id="r1", backend=pb.BACKEND_COQ,
                                 requirement_text="Adding zero to a natural changes nothing")],
            formalize=pb.FormalizeOptions(model="prover", max_attempts=3))

        async def go() -> list[pb.ProveResponse]:
            async with ScillmClient(running.grpc_target) as client:
                return [e async for e in client.prove.prove(request)]

        import asyncio

        events = asyncio.run(go())
        result = events[0].result
        assert result.verdict == pb.VERDICT_PROVED
        assert [a.verdict for a in result.attempts] == [pb.VERDICT_FAILED, pb.VERDICT_PROVED]
        assert result.attempts[0].diagnostics and result.attempts[1].usage.total_tokens == 15
        second_prompt = json.dumps(upstream.requests[1]["messages"])
        assert "reflexivity" in second_prompt  # the failed attempt went back to the model
    finally:
        running.stop()
        upstream.stop()


def test_formalize_loop_refuses_a_models_trailing_lemma(tmp_path: Path) -> None:
    """Through the service: a model that admits the theorem and appends a trivial lemma
    gets FAILED on every attempt, and its second prompt says which declaration failed."""
    cheat = ("```coq\nTheorem main : forall n : nat, n * 0 = 1.\nProof. Admitted.\n"
             "Lemma fine : True. Proof. exact I. Qed.\n```")
    upstream, running = _prover_mesh(tmp_path, [cheat])
    try:
        request = pb.ProveRequest(
            no_cache=True, formalize=pb.FormalizeOptions(model="prover", max_attempts=2),
            items=[pb.Obligation(item_id="r1", backend=pb.BACKEND_COQ,
                                 requirement_text="n times zero is one")])

        async def go() -> list[pb.ProveResponse]:
            async with ScillmClient(running.grpc_target) as client:
                return [e async for e in client.prove.prove(request)]

        import asyncio

        result = asyncio.run(go())[0].result
        assert result.verdict == pb.VERDICT_FAILED
        assert [a.verdict for a in result.attempts] == [pb.VERDICT_FAILED] * 2
        assert "main is assumed" in json.dumps(upstream.requests[1]["messages"])
    finally:
        running.stop()
        upstream.stop()


@pytest.mark.parametrize(("limits", "formalize", "param", "says"), [
    ({"timeout_s": 301}, {}, "limits.timeout",
     "timeout of 301 s is over this server's most, 300 s"),
    ({"memory_mib": 8193}, {}, "limits.memory_bytes",
     "memory limit of 8193 MiB is over this server's most, 8192 MiB"),
    ({}, {"model": "echo/x", "max_attempts": 11}, "formalize.max_attempts",
     "formalize.max_attempts must be 1..10, not 11"),
    ({}, {"model": "echo/x", "max_attempts": -1}, "formalize.max_attempts",
     "formalize.max_attempts must be 1..10, not -1"),
    ({}, {"model": "echo/x", "max_attempts": 2, "temperature": float("nan")},
     "formalize.temperature", "formalize.temperature must be between 0 and 2, not nan"),
])
async def test_a_request_cannot_give_a_prover_more_than_the_server_allows(
        mesh: RunningMesh, limits: dict[str, int], formalize: dict[str, object], param: str,
        says: str) -> None:
    """`limits` set a prover's time and address space: a caller asking for a terabyte or a
    day (or a million repair rounds) is refused, naming the field, before anything runs."""
    request = _batch()
    if "timeout_s" in limits:
        request.limits.timeout.FromSeconds(limits["timeout_s"])
    if "memory_mib" in limits:
        request.limits.memory_bytes = limits["memory_mib"] * 1024 * 1024
    if formalize:
        request.formalize.model = str(formalize["model"])
        request.formalize.max_attempts = int(formalize["max_attempts"])  # type: ignore[call-overload]
        if "temperature" in formalize:
            request.formalize.temperature = float(formalize["temperature"])  # type: ignore[arg-type]
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.prove.prove(request)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.param, says in info.value.message) == (param, True), info.value.message


async def test_the_most_a_request_may_ask_for_is_the_operators_to_set(tmp_path: Path) -> None:
    running = start_mesh(mesh_settings(tmp_path, services=("prove",), http_enabled=False,
                                       prove_max_timeout_s=5.0, prove_max_memory_mb=512))
    try:
        async with ScillmClient(running.grpc_target) as client:
            for field, value in (("timeout", 6), ("memory_bytes", 513 * 1024 * 1024)):
                request = _batch()
                if field == "timeout":
                    request.limits.timeout.FromSeconds(value)
                else:
                    request.limits.memory_bytes = value
                with pytest.raises(RPCError) as info:
                    [e async for e in client.prove.prove(request)]
                assert info.value.param == f"limits.{field}", info.value.message
            within = _batch()
            within.limits.timeout.FromSeconds(5)
            within.limits.memory_bytes = 512 * 1024 * 1024
            events = [e async for e in client.prove.prove(within)]
        assert events[-1].HasField("summary")
    finally:
        running.stop()


def test_the_ceilings_are_checked_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prove_max_timeout_s must be > 0"):
        mesh_settings(tmp_path, prove_max_timeout_s=0.0).validate()
    with pytest.raises(ValueError, match="prove_max_memory_mb must be >= 64"):
        mesh_settings(tmp_path, prove_max_memory_mb=10).validate()


def test_a_formalize_model_call_that_fails_says_why(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A formalize loop whose model call failed (an unknown model, a key refusing it, an
    upstream down) was logged as an internal error with a traceback per item and told the
    caller only "internal error while checking this item". The item is an ERROR naming
    the model call's failure, and nothing is logged as a bug."""
    caplog.set_level(logging.INFO, logger="scillm.prove")
    running = start_mesh(mesh_settings(tmp_path, http_enabled=False,
                                       services=("completion", "prove")))
    try:
        request = pb.ProveRequest(
            items=[pb.Obligation(item_id=f"r{i}", backend=pb.BACKEND_SMT,
                                 requirement_text="two plus two is four") for i in range(2)],
            formalize=pb.FormalizeOptions(model="nope/x", max_attempts=3))

        async def go() -> list[pb.ProveResponse]:
            async with ScillmClient(running.grpc_target) as client:
                return [e async for e in client.prove.prove(request)]

        import asyncio

        events = asyncio.run(go())
    finally:
        running.stop()
    results = [e.result for e in events if e.WhichOneof("event") == "result"]
    assert [r.verdict for r in results] == [pb.VERDICT_ERROR] * 2
    for result in results:
        assert "nope/x" in result.error and "not configured" in result.error
        assert len(result.attempts) == 1  # no repair loop without a model
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_the_repair_prompt_says_what_failed_not_what_was_printed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through the service, a scripted upstream and the real provers. A Coq formalisation
    that printed (Pwd, Check, Print, Compute) and failed had the printed text sent back to
    the model as the checker's first error; a formalisation holding a NUL byte came back
    with Coq's "Syntax Error: Lexer: Undefined token" or z3's "unexpected character". The
    repair prompt names the real error, then the NUL byte and where it is; the caller gets
    the NUL byte as a located diagnostic (1-based column), for Coq and for z3."""
    caplog.set_level(logging.INFO, logger="scillm.prove")
    printed = ("```coq\nPwd.\nCheck nat.\nPrint bool.\nCompute 1 + 1.\n"
               "Theorem t : 1 + 1 = 3.\nProof. reflexivity. Qed.\n```")
    coq_nul = "```coq\nTheorem t : 1 + 1 = 2.\nProof. refl\x00exivity. Qed.\n```"
    smt_nul = "```smt2\n(declare-const x Int)\n; goal\n(> (+ x 1)\x00 x)\n```"
    upstream, running = _prover_mesh(tmp_path, [printed, coq_nul, smt_nul, smt_nul])
    try:
        async def go(backend: int) -> pb.ItemResult:
            request = pb.ProveRequest(
                no_cache=True, formalize=pb.FormalizeOptions(model="prover", max_attempts=2),
                items=[pb.Obligation(item_id="r1", backend=backend,
                                     requirement_text="one plus one is two")])
            async with ScillmClient(running.grpc_target) as client:
                events = [e async for e in client.prove.prove(request)]
            return events[0].result

        import asyncio

        coq = asyncio.run(go(pb.BACKEND_COQ))
        smt = asyncio.run(go(pb.BACKEND_SMT))
    finally:
        running.stop()
        upstream.stop()
    told = [r["messages"][-1]["content"].split("The checked source")[0]
            for r in upstream.requests]
    assert 'FAILED: Unable to unify "3" with "1 + 1".' in told[1], told[1]
    assert not any(p in told[1] for p in ("/tmp", "nat", "bool")), told[1]
    assert "NUL byte" in told[3] and "line 3, column 11" in told[3], told[3]  # as the API
    for result, (line, column) in ((coq, (2, 12)), (smt, (3, 11))):
        assert result.verdict == pb.VERDICT_FAILED and not result.error, result
        (d,) = result.diagnostics
        assert d.severity == pb.SEVERITY_ERROR and "NUL byte" in d.message, d
        assert (d.line, d.column) == (line, column), d
        assert [a.verdict for a in result.attempts] == [pb.VERDICT_FAILED] * 2
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_control_character_is_located_for_the_caller(mesh: RunningMesh) -> None:
    """Through gRPC: the caller's Coq item holding ESC is FAILED with a diagnostic naming
    U+001B at its 1-based line and column, not Coq's "Undefined token"."""
    request = pb.ProveRequest(no_cache=True, items=[pb.Obligation(
        item_id="esc", backend=pb.BACKEND_COQ, statement="Theorem t : 1 + 1 = 2.",
        proof="Proof. refl\x1bexivity. Qed.")])
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.prove.prove(request)]
    result = events[0].result
    assert result.verdict == pb.VERDICT_FAILED, result
    (d,) = result.diagnostics
    assert "U+001B" in d.message and (d.line, d.column) == (2, 12), d


@pytest.mark.parametrize(("timeout", "settings", "cut_by"), [
    (20.0, {}, "the call's deadline"),
    (300.0, {"prove_formalize_max_s": 4.0}, "formalize_max_s, 4 s")])
def test_a_formalisation_ends_before_the_calls_deadline(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, timeout: float,
        settings: dict[str, Any], cut_by: str) -> None:
    """The rounds of a formalisation had no deadline of their own: a model that did not
    answer the repair held the item until gRPC cut the call at its deadline, and the
    caller got DEADLINE_EXCEEDED with no result for any item, nor the summary. The loop
    ends before the call's deadline, or the operator's bound on an item's rounds
    (SCILLM_PROVE_FORMALIZE_MAX_S): the item is TIMEOUT saying so after 1 round, with
    that round's diagnostics; the other item's result and the summary still arrive."""
    caplog.set_level(logging.INFO, logger="scillm.prove")
    first = "```smt2\n(declare-const x Int)\n; goal\n(> x undeclared)\n```"
    asked: list[dict[str, Any]] = []

    def hold(request: dict[str, Any]) -> bool:
        asked.append(request)
        return len(asked) > 1  # the repair: answered only once released, after the test

    upstream, running = _prover_mesh(tmp_path, [first], hold=hold, **settings)
    try:
        request = pb.ProveRequest(
            no_cache=True, formalize=pb.FormalizeOptions(model="prover", max_attempts=3),
            items=[pb.Obligation(item_id="direct", backend=pb.BACKEND_SMT,
                                 preamble="(declare-const x Int)", statement="(> (+ x 1) x)"),
                   pb.Obligation(item_id="slow", backend=pb.BACKEND_SMT,
                                 requirement_text="x is positive")])

        async def go() -> list[pb.ProveResponse]:
            async with ScillmClient(running.grpc_target) as client:
                return [e async for e in client.prove.prove(request, timeout=timeout)]

        events = asyncio.run(go())
    finally:
        upstream.release()
        running.stop()
        upstream.stop()
    assert len(asked) == 2  # the repair was asked for, and never answered in time
    results = {e.result.item_id: e.result for e in events if e.HasField("result")}
    assert results["direct"].verdict == pb.VERDICT_PROVED
    slow = results["slow"]
    assert slow.verdict == pb.VERDICT_TIMEOUT, slow
    assert "ran out of time after 1 round(s)" in slow.error, slow.error
    assert cut_by in slow.error, slow.error
    assert [a.verdict for a in slow.attempts] == [pb.VERDICT_FAILED, pb.VERDICT_TIMEOUT]
    assert "undeclared" in slow.diagnostics[0].message, slow.diagnostics
    assert "ran out of time" in slow.diagnostics[-1].message
    assert events[-1].HasField("summary") and events[-1].summary.unknown == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
