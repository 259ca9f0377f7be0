"""The `lean4` backend: `lean --json FILE` per item (`lake env lean` in a project), jailed.

Lean prints one JSON object per message::

    {"severity": "error", "pos": {"line": 3, "column": 2},
     "endPos": {"line": 3, "column": 7}, "data": "unknown identifier 'foo'", ...}

The checker appends its audit to the item (`_leantext.audit`): a type check of the stated
theorem, and `#print axioms` of every named declaration. PROVED only when all hold:

* no error and no "declaration uses 'sorry'" in the item's own lines, lean exits 0;
* every declaration's `#print axioms` answer was given, once, at the checker's line, and
  lists only Lean's foundational axioms (propext, Classical.choice, Quot.sound):
  `sorryAx`, an `axiom` of the item, `Lean.ofReduceBool`/`Lean.trustCompiler`
  (native_decide) all fail it;
* the stated theorem has the stated type (the type check raised no error);
* the item holds no command that runs code or extends the syntax (`#eval`, `macro`,
  `elab`, `syntax`, `notation`, `set_option debug.skipKernelTC`, ...), which could
  change or forge the audit's answers; and no anonymous declaration (an `example` or
  an unnamed `instance`), whose axioms cannot be asked for.

ERROR (the prover, not the item, failed) only from what the lean process reports of
itself: killed by a signal, or its runtime's out-of-memory panic on standard error
(`crashed`); never from the text of a message, which can quote the item.

No Lean toolchain can be installed on the machines this was built on: these rules are
tested against Lean's documented output by a stand-in `lean` (tests/server/prove).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..jail import Jail
from ._backend import probe_version
from ._coqtext import locate
from ._leantext import (
    ALLOWED_AXIOMS,
    Audit,
    audit,
    declarations,
    parse_axioms_reply,
    refused,
    theorems,
)
from ._process import make_inbox, put_item, run_once
from ._settings import ProveSettings
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["LeanBackend", "crashed", "parse_lean_messages", "verdict_of"]

_SORRY = "declaration uses 'sorry'"

INSTRUCTIONS = """\
You write Lean 4 proofs checked by `lean`.
Reply with one fenced code block (```lean ... ```) holding a complete Lean 4 file: the
imports you need, then `theorem <name> : <statement> := by ...`. No `sorry`, `admit`,
`axiom`, `native_decide`, `#eval`, `macro` or `notation`: the checker rejects them, and
every declaration must rest only on propext, Classical.choice and Quot.sound."""


def _position(value: Any) -> tuple[int | None, int | None]:
    if isinstance(value, dict):
        line, column = value.get("line"), value.get("column")
        return (line if isinstance(line, int) else None,
                column if isinstance(column, int) else None)
    return None, None


def parse_lean_messages(output: str) -> list[Diagnostic]:
    """Diagnostics from `lean --json` output; other lines become error messages."""
    diagnostics: list[Diagnostic] = []
    for raw in output.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            diagnostics.append(Diagnostic("error", raw))
            continue
        if not isinstance(msg, dict):
            diagnostics.append(Diagnostic("error", raw))
            continue
        severity = str(msg.get("severity", "error")).lower()
        severity = "info" if severity == "information" else severity
        line, column = _position(msg.get("pos"))
        end_line, end_column = _position(msg.get("endPos"))
        diagnostics.append(Diagnostic(severity, str(msg.get("data", "")).strip(),
                                      line, column, end_line, end_column))
    return diagnostics


def verdict_of(returncode: int, diagnostics: Sequence[Diagnostic]) -> tuple[Verdict, str]:
    """PROVED only with exit 0, no error and no sorry warning."""
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        return Verdict.FAILED, errors[0].message
    if any(_SORRY in d.message for d in diagnostics):
        return Verdict.FAILED, "the proof uses sorry"
    if returncode != 0:
        return Verdict.FAILED, f"lean exited {returncode}"
    return Verdict.PROVED, "no errors, no sorry"


class LeanBackend:
    """Lean 4 behind the `Backend` interface (one process per item)."""

    name = "lean4"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._jail: Jail | None = None
        self._slots = asyncio.Semaphore(settings.lean_pool_size)

    @property
    def jail(self) -> Jail:
        if self._jail is None:
            raise RuntimeError("the lean4 backend is not started")
        return self._jail

    def _argv(self, path: str) -> list[str]:
        s = self._settings
        lean = shutil.which(s.lean_path) or s.lean_path
        if s.lean_project_dir is not None:
            return [shutil.which(s.lake_path) or s.lake_path, "env", lean, "--json", path]
        return [lean, "--json", path]

    def _binds(self) -> list[str]:
        """Host directories the jail must show: the toolchain (lean and lake live in
        `<prefix>/bin`, the library in `<prefix>/lib`) and the project."""
        s = self._settings
        binds = [str(Path(os.path.realpath(found)).parent.parent)
                 for found in (shutil.which(s.lean_path), shutil.which(s.lake_path)) if found]
        if s.lean_project_dir is not None:
            binds.append(str(s.lean_project_dir))
        return binds

    async def info(self) -> BackendInfo:
        if self._info is None:
            s = self._settings
            if s.lean_project_dir is not None and shutil.which(s.lake_path) is None:
                self._info = BackendInfo(self.name, False,
                                         reason=f"{s.lake_path!r} is not on PATH")
            elif shutil.which(s.lean_path) is None:
                self._info = BackendInfo(self.name, False,
                                         reason=f"{s.lean_path!r} is not on PATH")
            elif self.jail.refuses_file_access:
                self._info = BackendInfo(self.name, False,
                                         reason=self.jail.refuses_file_access)
            else:
                self._info = await probe_version(self.name, [*self._argv("")[:-2],
                                                             "--version"], self._jail_for_lean)
        return self._info

    @property
    def _jail_for_lean(self) -> Jail:
        base = self.jail
        binds = tuple(dict.fromkeys([*base.settings.ro_binds, *self._binds()]))
        return replace(base, settings=replace(base.settings, ro_binds=binds))

    def source_of(self, obligation: Obligation) -> str:
        ob = obligation
        parts = [f"import {name}" for name in ob.imports]
        parts += [p.strip("\n") for p in (ob.preamble, ob.statement, ob.proof) if p.strip()]
        return "\n".join(parts) + "\n"

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        source = self.source_of(obligation)
        problem = _policy(source)
        if problem is not None:
            return CheckOutcome(Verdict.FAILED, source, (problem,), message=problem.message,
                                prover_ran=False)
        decls = declarations(source)
        statement = self._stated_region(obligation, source)
        stated = next((d for d in theorems(decls) if statement[0] <= d.at < statement[1]),
                      None)
        if stated is None:
            message = "no theorem (or lemma) with a name found in the statement to check"
            return CheckOutcome(Verdict.FAILED, source, (Diagnostic("error", message),),
                                message=message, prover_ran=False)
        checked = audit(source, stated)
        jail = self._jail_for_lean
        async with self._slots:
            with tempfile.TemporaryDirectory(prefix="scillm-lean-",
                                             dir=self._settings.scratch_dir) as tmp:
                inbox = make_inbox("item-", Path(tmp))
                put_item(inbox, "Item.lean", checked.text)
                try:
                    result = await run_once(
                        self._argv(f"{jail.inbox_path(inbox)}/Item.lean"), jail=jail,
                        timeout_s=limits.timeout_s, memory_mb=limits.memory_mb, inbox=inbox,
                        stderr_apart=True)
                except TimeoutError:
                    return CheckOutcome(Verdict.TIMEOUT, source,
                                        message=f"lean killed after {limits.timeout_s:g} s")
        diagnostics = parse_lean_messages(f"{result.output}\n{result.errors}")
        if crashed(result.returncode, result.errors):
            return CheckOutcome(Verdict.ERROR, source, tuple(diagnostics), message=(
                f"lean crashed (exit {result.returncode}, memory limit {limits.memory_mb} MiB)"))
        return judge(source, checked, stated.name, result.returncode, diagnostics)

    @staticmethod
    def _stated_region(obligation: Obligation, source: str) -> tuple[int, int]:
        """Where the statement sits in `source` (the proof, when the statement is empty)."""
        text = obligation.statement.strip("\n") if obligation.statement.strip() else \
            obligation.proof.strip("\n")
        at = source.rfind(text) if text else -1
        return (at, at + len(text)) if at >= 0 else (0, len(source))

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        del prewarm  # nothing to keep warm
        self._jail = jail

    async def close(self) -> None:
        """Nothing to close: each check's process is reaped (or killed) by the check."""


#: What Lean's runtime prints on its standard error, and exits 1, when an allocation
#: fails (`lean_internal_panic_out_of_memory`): under the item's RLIMIT_AS, out of memory.
_OUT_OF_MEMORY = "INTERNAL PANIC: out of memory"


def crashed(returncode: int, errors: str) -> bool:
    """Whether lean itself failed rather than the item: killed by a signal (`returncode`
    below 0, or 128 + the signal as bubblewrap's init reports it), or its runtime's
    out-of-memory panic alone on a line of its standard error (`errors`) with a failing
    exit. Never a message's text: Lean's messages (standard output) quote the item, so an
    error about the string "out of memory" made the item's own FAILED an ERROR; and the
    item can neither write to standard error nor choose lean's exit status, since every
    command that runs code is refused (`_policy`)."""
    if returncode < 0 or returncode > 128:
        return True
    return returncode != 0 and _OUT_OF_MEMORY in (line.strip() for line in errors.splitlines())


def _policy(source: str) -> Diagnostic | None:
    """A diagnostic for a command the Lean path refuses, or for an anonymous declaration."""
    found = refused(source)
    if found is not None:
        word, at = found
        line, col = locate(source, at)
        return Diagnostic("error", f"`{word}` is refused: commands that run code or extend the "
                          "syntax could change or forge the checker's audit", line, col, line,
                          col + len(word))
    for decl in declarations(source):
        if not decl.name and decl.kind in ("example", "instance"):
            line, col = locate(source, decl.at)
            return Diagnostic("error", f"an anonymous `{decl.kind}` cannot be audited for "
                              "axioms: give it a name (theorem <name> : ...)", line, col, line,
                              col + len(decl.kind))
    return None


def judge(source: str, checked: Audit, stated: str, returncode: int,
          diagnostics: Sequence[Diagnostic]) -> CheckOutcome:
    """The verdict from Lean's messages on the audited file (see the module docstring)."""
    audit_lines = set(checked.axiom_lines) | ({checked.type_line} if checked.type_line else set())
    mine = [d for d in diagnostics if d.line is None or d.line not in audit_lines]
    theirs = [d for d in diagnostics if d.line is not None and d.line in audit_lines]
    # An error on the audit's own lines also makes lean exit non-zero; it is judged below.
    ours_failed = any(d.severity == "error" for d in theirs)
    verdict, message = verdict_of(0 if ours_failed else returncode, mine)
    if verdict is not Verdict.PROVED:
        return CheckOutcome(verdict, source, tuple(mine), message=message)
    problems: list[Diagnostic] = []
    if checked.type_line is None:
        problems.append(Diagnostic("error", f"the stated type of {stated} could not be read"))
    elif any(d.severity == "error" for d in theirs if d.line == checked.type_line):
        problems.append(Diagnostic("error", f"{stated} does not have the stated type at the "
                                   "end of its declaration (a section variable it used?)"))
    for line, name in checked.axiom_lines.items():
        replies = [parse_axioms_reply(d.message) for d in theirs
                   if d.line == line and d.severity == "info"]
        if len(replies) != 1 or replies[0] is None or replies[0][0] != name:
            problems.append(Diagnostic("error", f"Lean gave no single answer to `#print "
                                       f"axioms {name}`"))
            continue
        extra = [a for a in replies[0][1] if a not in ALLOWED_AXIOMS]
        if extra:
            problems.append(Diagnostic("error", f"{name} depends on axioms: {', '.join(extra)}"))
    if problems:
        return CheckOutcome(Verdict.FAILED, source, (*mine, *problems),
                            message=problems[0].message)
    return CheckOutcome(Verdict.PROVED, source, tuple(mine), message=(
        f"{stated} has the stated type; every declaration rests only on Lean's foundational "
        "axioms"))
