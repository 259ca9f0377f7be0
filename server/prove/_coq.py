"""The `coq` backend: warm `coqtop` processes, each item `Load`ed between resets.

A worker loads the configured libraries once, then marks the state with a fresh
definition. An item is written to the worker's scratch file and `Load`ed in one
command (so its text cannot break the protocol), its theorem checked with
`Print Assumptions`, then `Abort All.` and `Reset <mark>.` return to the marked state
(definitions, imports, options and open proofs are gone; loaded libraries stay warm).

coqtop reports errors of a `Load` without a position, so a failed item is compiled
once more by `coqc` to obtain located diagnostics. PROVED requires the load to succeed
and `Print Assumptions` to print "Closed under the global context".
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from ._backend import probe_version
from ._coqtext import axioms_of, compose, locate, parse_messages, theorem_name
from ._pool import WorkerPool
from ._process import ProverProcess, run_once
from ._settings import ProveSettings
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["CoqBackend", "CoqWorker"]

_PROMPT = b"</prompt>"
_ERROR = re.compile(r"^Error:", re.MULTILINE)
_TAG = re.compile(r"<prompt>.*?$|</?(?:infomsg|warning|prompt)>", re.MULTILINE)
_CLOSED = "Closed under the global context"
_OOM = ("Out of memory", "out of memory")

INSTRUCTIONS = """\
You write Coq 8.16 proofs checked by coqc.
Reply with one fenced code block (```coq ... ```) holding a complete Coq file: the
`Require Import` lines you need, then `Theorem <name> : <statement>.` and its proof
`Proof. ... Qed.` No `Admitted`, `admit`, `Axiom` or `Parameter`: the checker
rejects any proof that depends on an assumption."""


class CoqWorker:
    """One long-lived `coqtop -emacs` with its scratch directory."""

    def __init__(self, proc: ProverProcess, scratch: Path) -> None:
        self._proc = proc
        self._scratch = scratch
        self._mark = f"scillm_mark_{secrets.token_hex(6)}"
        self.file = scratch / "Item.v"

    @classmethod
    async def start(cls, settings: ProveSettings) -> CoqWorker:
        scratch = Path(tempfile.mkdtemp(prefix="scillm-coq-", dir=settings.scratch_dir))
        proc = await ProverProcess.spawn([settings.coqtop_path, "-emacs", "-q"], cwd=scratch,
                                         memory_mb=settings.default_limits.memory_mb)
        worker = cls(proc, scratch)
        try:
            async with asyncio.timeout(settings.start_timeout_s):
                await proc.read_until(_PROMPT)
                if settings.coq_warm_libraries:
                    out = await worker.command(f"Require {' '.join(settings.coq_warm_libraries)}.")
                    if _ERROR.search(out):
                        raise RuntimeError(f"coqtop could not load libraries: {out.strip()}")
                await worker._set_mark()
        except BaseException:
            await worker.kill()
            raise
        return worker

    @property
    def alive(self) -> bool:
        return self._proc.alive

    async def kill(self) -> None:
        await self._proc.kill()
        shutil.rmtree(self._scratch, ignore_errors=True)

    async def command(self, sentence: str) -> str:
        """Run one vernacular command; its output without prompt and tags."""
        await self._proc.send(sentence + "\n")
        return _TAG.sub("", await self._proc.read_until(_PROMPT))

    async def _set_mark(self) -> None:
        out = await self.command(f"Definition {self._mark} := tt.")
        if _ERROR.search(out):
            raise RuntimeError(f"coqtop could not set its mark: {out.strip()}")

    async def run(self, source: str, name: str, memory_mb: int) -> tuple[bool, str]:
        """Load `source`, print the assumptions of `name`, reset.

        (ok, output): ok when the load succeeded; output is the assumptions when ok,
        else the error text. A worker that cannot return to its mark is killed.
        """
        self._proc.set_memory_limit(memory_mb)
        self.file.write_text(source)
        out = await self.command(f'Load "{self.file}".')
        ok = not _ERROR.search(out)
        if ok:
            out = await self.command(f"Print Assumptions {name}.")
            ok = not _ERROR.search(out)
        cleanup = await self.command("Abort All.") + await self.command(f"Reset {self._mark}.")
        if _ERROR.search(cleanup) or any(s in out for s in _OOM):
            await self.kill()
        else:
            await self._set_mark()
        return ok, out.strip()


class CoqBackend:
    """Coq behind the `Backend` interface."""

    name = "coq"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._pool = WorkerPool(self._new_worker, settings.coq_pool_size)

    async def _new_worker(self) -> CoqWorker:
        return await CoqWorker.start(self._settings)

    async def info(self) -> BackendInfo:
        if self._info is None:
            self._info = await probe_version(self.name, [self._settings.coqc_path, "--version"])
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        ob = obligation
        return compose(ob.imports, ob.preamble, ob.statement, ob.proof)

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        source = self.source_of(obligation)
        found = theorem_name(obligation.statement, source)
        if found is None:
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic(
                "error", "no Theorem/Lemma declaration found to check"),),
                message="no theorem found")
        name, offset = found
        async with self._pool.lease() as worker:
            try:
                async with asyncio.timeout(limits.timeout_s):
                    ok, out = await worker.run(source, name, limits.memory_mb)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, source,
                                    message=f"coqtop killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return _crashed(source, limits, str(exc))
        if any(s in out for s in _OOM):
            return _crashed(source, limits, out)
        if ok and _CLOSED in out:
            return CheckOutcome(Verdict.PROVED, source, message=_CLOSED)
        if ok:
            axioms = axioms_of(out) or ["(unparsed) " + out[:200]]
            line, col = locate(source, offset)
            message = (f"{name} is admitted, not proved" if name in axioms else
                       f"{name} depends on assumptions: {', '.join(axioms)}")
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic(
                "error", message, line, col, line, col + len(name)),), message=message)
        return await self._diagnose(source, out, limits)

    async def _diagnose(self, source: str, warm_error: str, limits: Limits) -> CheckOutcome:
        """FAILED with diagnostics located by a cold `coqc` run of the same source."""
        with tempfile.TemporaryDirectory(prefix="scillm-coqc-",
                                         dir=self._settings.scratch_dir) as tmp:
            path = Path(tmp) / "Item.v"
            path.write_text(source)
            try:
                result = await run_once([self._settings.coqc_path, "-q", path.name],
                                        timeout_s=limits.timeout_s, memory_mb=limits.memory_mb,
                                        cwd=Path(tmp))
                diagnostics = parse_messages(result.output, source)
            except TimeoutError:
                diagnostics = []
        errors = [d for d in diagnostics if d.severity == "error"]
        if not errors:
            message = " ".join(_ERROR.sub("", warm_error).split())
            errors = [Diagnostic("error", message or "coq rejected the source")]
            diagnostics = [*diagnostics, *errors]
        return CheckOutcome(Verdict.FAILED, source, tuple(diagnostics),
                            message=errors[0].message)

    async def start(self, *, prewarm: bool) -> None:
        if prewarm and (await self.info()).available:
            await self._pool.prewarm()

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> WorkerPool[CoqWorker]:
        return self._pool


def _crashed(source: str, limits: Limits, output: str) -> CheckOutcome:
    return CheckOutcome(Verdict.ERROR, source, message=(
        f"coq ran out of memory or crashed (memory limit {limits.memory_mb} MiB): "
        f"{' '.join(output.split())[-300:]}"))
