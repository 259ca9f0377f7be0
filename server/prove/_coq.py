"""The `coq` backend: warm `coqtop` workers in the jail; Coq itself judges every item.

PROVED requires all of (the protocol that asks Coq is in `_coqworker`):

* the whole file loaded and the module closed (no error, no proof or section left open);
* every declaration of the item (nested modules, closed sections, instances, Program
  obligations included) is "Closed under the global context": no axiom, parameter,
  conjecture, admitted lemma or obligation, and none relies on switched-off guard,
  positivity or universe checking (Coq lists those as assumptions too);
* the stated theorem exists at the end under its name with the stated type. A theorem
  whose type changed when its section closed (it used a section hypothesis) is not the
  stated one.

A failure carries one diagnostic per culprit, placed on its declaration. coqtop reports
errors of a ``Load`` without a position, so a file that does not load is compiled once
more by ``coqc`` (in the jail too) to obtain located diagnostics.

What the item prints (``Check``, ``Print``, ``Compute``, ``Pwd``, ``idtac``, ...) is
output, not a diagnostic, and decides nothing: coqc prints it on its standard output and
its messages on standard error, and only standard error is read for diagnostics; of
coqtop's reply to the ``Load`` only Coq's own error (`coq_error`) is read, as the message
when coqc gives none, and for Coq's own "out of memory" report (the whole error, never
a text an item's error may quote: `out_of_memory`); and of the kernel check only what
coqchk prints after a fresh nonce.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path

from ..jail import Jail
from ._backend import probe_version
from ._coqtext import (
    Composed,
    blank,
    compose,
    declarations,
    locate,
    parse_messages,
    stated_theorem,
    statement_problem,
)
from ._coqworker import TAG, CoqWorker, Judgement, out_of_memory, prepare
from ._pool import WorkerPool
from ._process import make_inbox, put_item, run_once
from ._settings import ProveSettings
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["CoqBackend", "assumptions", "kernel_assumptions"]

INSTRUCTIONS = """\
You write Coq 8.16 proofs checked by coqc.
Reply with one fenced code block (```coq ... ```) holding a complete Coq file: the
`Require Import` lines you need, then `Theorem <name> : <statement>.` and its proof
`Proof. ... Qed.` No `Admitted`, `admit`, `Axiom`, `Parameter` or `Hypothesis`: the
checker rejects any declaration that depends on an assumption, and judges the first
theorem of the file with exactly the type it states."""


class CoqBackend:
    """Coq behind the `Backend` interface."""

    name = "coq"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._jail: Jail | None = None
        self._pool = WorkerPool(self._new_worker, settings.coq_pool_size)

    @property
    def jail(self) -> Jail:
        if self._jail is None:
            raise RuntimeError("the coq backend is not started")
        return self._jail

    async def _new_worker(self) -> CoqWorker:
        return await CoqWorker.start(self._settings, self.jail)

    async def info(self) -> BackendInfo:
        if self._info is None:
            refused = self.jail.refuses_file_access
            coqc = self._settings.coqc_path
            if refused and shutil.which(coqc) is not None:  # else: say it is not on PATH
                self._info = BackendInfo(self.name, False, reason=refused)
            else:
                self._info = await probe_version(self.name, [coqc, "--version"], self.jail)
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        return self._compose(obligation).text

    @staticmethod
    def _compose(obligation: Obligation) -> Composed:
        ob = obligation
        return compose(ob.imports, ob.preamble, ob.statement, ob.proof)

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        composed = self._compose(obligation)
        source = composed.text
        switched = checks_switched_off(source)
        if switched is not None:
            return CheckOutcome(Verdict.FAILED, source, (switched,), message=switched.message,
                                prover_ran=False)
        decl = stated_theorem(composed)
        if decl is None:
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic(
                "error", "no Theorem, Lemma, Fact, Remark, Corollary, Proposition, Property "
                "or Example found in the statement to check"),), message="no theorem found",
                prover_ran=False)
        problem = statement_problem(composed, decl)
        if problem is not None:
            line, column = locate(source, composed.statement[1])
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic(
                "error", problem, line, column),), message=problem, prover_ran=False)
        job = prepare(composed, decl.sentence, decl.name_at, decl.name,
                      context_end=_context_end(obligation, composed))
        async with self._pool.lease() as worker:
            try:
                async with asyncio.timeout(limits.timeout_s):
                    judgement = await worker.judge(job, limits.memory_mb)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, source,
                                    message=f"coqtop killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return _crashed(source, limits, str(exc))
            if worker.items >= self._settings.coq_worker_items or worker.worn_out:
                await worker.kill()  # retired: the pool starts a fresh one
        if not judgement.loaded:
            # Coq's own report of its memory running out, not an error that says so.
            if out_of_memory(judgement.load_error):
                return _crashed(source, limits, judgement.load_error)
            return await self._diagnose(source, judgement.load_error, limits)
        outcome = _verdict(source, decl.name, decl.name_at, judgement)
        if outcome.verdict is Verdict.PROVED and self._settings.coq_kernel_check:
            return await self._kernel_check(source, limits) or outcome
        return outcome

    async def _kernel_check(self, source: str, limits: Limits) -> CheckOutcome | None:
        """None when the independent kernel checker `coqchk` accepts the compiled item with
        nothing of its own assumed; else FAILED with what it said (`coq_kernel_check`).

        Only what follows a fresh nonce, echoed once coqc is done, is read as coqchk's
        summary: what the item printed (coqc's standard output, dropped) or put in a
        message (a deprecation note) can print coqchk's shape of an axiom of the item,
        which made an honest proof FAILED."""
        nonce = f"scillm-coqchk-{secrets.token_hex(8)}"
        with tempfile.TemporaryDirectory(prefix="scillm-coqchk-",
                                         dir=self._settings.scratch_dir) as tmp:
            inbox = make_inbox("item-", Path(tmp))
            put_item(inbox, "Item.v", source)
            out = "/tmp" if self.jail.isolation == "bubblewrap" else tmp
            script = (f"{shlex.quote(self._settings.coqc_path)} -q -o {out}/Item.vo "
                      f"{shlex.quote(self.jail.inbox_path(inbox))}/Item.v >/dev/null && "
                      f"echo {nonce} && cd {out} && "
                      f"{shlex.quote(self._settings.coqchk_path)} -silent -o -norec Item")
            try:
                result = await run_once(["/bin/sh", "-c", script], jail=self.jail,
                                        timeout_s=limits.timeout_s,
                                        memory_mb=limits.memory_mb, inbox=inbox)
            except TimeoutError:
                message = f"coqchk did not finish within {limits.timeout_s:g} s"
                return CheckOutcome(Verdict.TIMEOUT, source, message=message)
        coqc, _, coqchk = result.output.partition(f"{nonce}\n")
        assumed = kernel_assumptions(coqchk)
        if result.returncode == 0 and "CONTEXT SUMMARY" in coqchk and not assumed:
            return None
        said = ", ".join(assumed) if assumed else " ".join((coqchk or coqc).split())[-300:]
        message = f"the kernel checker coqchk rejected the item: {said}"
        return CheckOutcome(Verdict.FAILED, source, (Diagnostic("error", message),),
                            message=message)

    async def _diagnose(self, source: str, warm_error: str, limits: Limits) -> CheckOutcome:
        """FAILED with diagnostics located by a cold `coqc` run of the same source; else
        with `warm_error` (`coq_error`: Coq's own error on the warm Load).

        Only coqc's standard error is read: its standard output is what the item printed,
        which was read as the item's first error ("/tmp nat : Set ..." for `Pwd. Check
        nat.`), and fed to the model as what to repair."""
        with tempfile.TemporaryDirectory(prefix="scillm-coqc-",
                                         dir=self._settings.scratch_dir) as tmp:
            inbox = make_inbox("item-", Path(tmp))
            put_item(inbox, "Item.v", source)
            where = self.jail.inbox_path(inbox)
            output = "/tmp/Item.vo" if self.jail.isolation == "bubblewrap" else f"{tmp}/Item.vo"
            try:
                result = await run_once([self._settings.coqc_path, "-q", "-o", output,
                                         f"{where}/Item.v"], jail=self.jail,
                                        timeout_s=limits.timeout_s, memory_mb=limits.memory_mb,
                                        inbox=inbox, stderr_apart=True)
                diagnostics = parse_messages(result.errors, source)
            except TimeoutError:
                diagnostics = []
        errors = [d for d in diagnostics if d.severity == "error"]
        if not errors:
            text = " ".join(warm_error.removeprefix("Error:").split())
            message = text[:500] or (
                "the file did not load to its end, or left a proof, section or module open")
            errors = [Diagnostic("error", message)]
            diagnostics = [*diagnostics, *errors]
        return CheckOutcome(Verdict.FAILED, source, tuple(diagnostics),
                            message=errors[0].message)

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        self._jail = jail
        if prewarm and (await self.info()).available:
            await self._pool.prewarm()

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> WorkerPool[CoqWorker]:
        return self._pool


def _context_end(obligation: Obligation, composed: Composed) -> int | None:
    """Where a formalized item's trusted context (the imports and the caller's preamble)
    ends and the model's code begins; None for an item its caller wrote whole."""
    formalized = obligation.requirement_text.strip() and not obligation.statement.strip()
    if not formalized or not obligation.preamble.strip():
        return None
    return composed.proof[0]


def _verdict(source: str, stated: str, stated_at: int, judgement: Judgement) -> CheckOutcome:
    """PROVED, or FAILED with one diagnostic per declaration Coq did not accept."""
    decls = {d.name: d for d in declarations(source)}
    diagnostics: list[Diagnostic] = []
    for full, reply in judgement.open.items():
        short = full.rsplit(".", 1)[-1]
        assumed = assumptions(reply)
        if short in assumed or full in assumed:
            message = f"{short} is assumed (an axiom, parameter or admitted proof), not proved"
        else:
            message = f"{short} depends on assumptions: {', '.join(assumed) or reply.strip()}"
        decl = decls.get(short)
        if decl is None:
            diagnostics.append(Diagnostic("error", message))
        else:
            line, col = locate(source, decl.name_at)
            diagnostics.append(Diagnostic("error", message, line, col, line, col + len(short)))
    if judgement.stated_ok is not True and not any(
            full.rsplit(".", 1)[-1] == stated for full in judgement.open):
        line, col = locate(source, stated_at)
        message = (f"{stated} does not have the stated type at the end of the source (a "
                   "section hypothesis it used was discharged into it, or it was stated "
                   "again)"
                   if judgement.stated_found else
                   f"{stated} is not in the environment at the end of the source (stated "
                   "inside a module type or functor, or removed)")
        diagnostics.insert(0, Diagnostic("error", message, line, col, line, col + len(stated)))
    # A reading of the statement whose type the proved theorem lacks (see `prepare`).
    for read_ok, after, instead, why in (
            (judgement.context_ok, "the formalisation's own definitions",
             "in the requirement's context (the imports and the preamble)",
             "the formalisation changes what the context's names mean (a name defined "
             "again, an Import that shadows it)"),
            (judgement.clean_ok, "the item's own definitions",
             "in Coq with the imports alone",
             "the preamble (or the text before the theorem) changes its meaning (a "
             "notation, a scope, a name of Coq's defined again)")):
        if read_ok is False and judgement.stated_ok is True:
            line, col = locate(source, stated_at)
            diagnostics.insert(0, Diagnostic("error", (
                f"{stated} is proved for what the statement means after {after}, not for "
                f"what it means {instead}: {why}"), line, col, line, col + len(stated)))
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.line is None, d.line or 0, d.column or 0))
        return CheckOutcome(Verdict.FAILED, source, tuple(diagnostics),
                            message=diagnostics[0].message)
    notes: tuple[Diagnostic, ...] = ()
    if not judgement.clean:
        line, col = locate(source, stated_at)
        notes = (Diagnostic("info", (
            f"the statement of {stated} does not read with the imports alone: it uses the "
            "item's own definitions, and means what they define"), line, col, line,
            col + len(stated)),)
    return CheckOutcome(Verdict.PROVED, source, notes, message=(
        f"{stated} has the stated type; every declaration is closed under the global context"))


#: Vernacular that switches off a kernel check or changes the theory. Coq reports most of
#: their uses in `Print Assumptions`, but not all (rocq-prover/rocq#16646: universe
#: checking switched off around a functor application goes unreported), and an item that
#: uses them can never be PROVED anyway, so they are refused before Coq runs. Matched in the
#: text with comments and strings blanked and in the raw text, so neither comments between
#: the words nor a lexer that disagrees with Coq's can hide them.
_SWITCHES = re.compile(
    r"\bUnset\s+(?:Guard|Positivity|Universe)\s+Checking\b|\bUnset\s+Template\s+Check\b"
    r"|\bSet\s+Definitional\s+UIP\b|\bbypass_check\b|\bTyping\s+Flags\b")


def checks_switched_off(source: str) -> Diagnostic | None:
    """A diagnostic on the first vernacular of `_SWITCHES` in `source`, or None."""
    m = _SWITCHES.search(blank(source)) or _SWITCHES.search(source)
    if m is None:
        return None
    line, col = locate(source, m.start())
    end_line, end_col = locate(source, m.end())
    words = " ".join(source[m.start():m.end()].split())
    return Diagnostic("error", f"`{words}` is refused: switching off the kernel's guard, "
                      "positivity, universe or template checks (or changing the theory) "
                      "can never give a proof PROVED accepts", line, col, end_line, end_col)


def kernel_assumptions(output: str) -> list[str]:
    """What `coqchk -o` lists of the item's own library (`Item.`) in its context summary:
    axioms, type-in-type, unsafe fixpoints, assumed positivity. The admitted standard
    library's entries are not the item's."""
    found: list[str] = []
    section = ""
    for line in output.splitlines():
        if line.startswith("* "):
            section = line[2:].split(":", 1)[0]
        elif line.startswith("    Item.") and section:
            found.append(f"{line.strip()} ({section.lower()})")
    return found


def assumptions(reply: str) -> list[str]:
    """What a `Print Assumptions` reply lists: axiom names and Coq's notes on switched-off
    checks ("f is assumed to be guarded."), for messages only (never for the verdict)."""
    found: list[str] = []
    for line in TAG.sub("", reply).splitlines():
        m = re.match(r"^([^\W\d][\w'.]*) :", line)
        if m is not None:
            found.append(m.group(1))
        elif line.strip() and line.strip() != "Axioms:" and not line.startswith(" "):
            found.append(line.strip().rstrip("."))
    return found


def _crashed(source: str, limits: Limits, output: str) -> CheckOutcome:
    return CheckOutcome(Verdict.ERROR, source, message=(
        f"coq ran out of memory or crashed (memory limit {limits.memory_mb} MiB): "
        f"{' '.join(output.split())[-300:]}"))
