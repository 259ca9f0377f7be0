"""Local tools: `z3`, `cvc5` (optional: the smt backend's second solver), `coqc`, `coqtop`,
`lean`, `bubblewrap` (its version *and* a namespace probe), `node`."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable
from dataclasses import replace

from ...jail import jailed_which
from ._check import Check, Status, installed, one_line, run_command

__all__ = ["PART_HINTS", "tool_checks"]

_HINT_Z3 = "apt-get install z3"
_HINT_CVC5 = ("apt-get install cvc5; optional: only smt items that ask for cvc5 (smt_solver "
              "cvc5 or both) need it")
_HINT_COQ = "apt-get install coq"
_HINT_LEAN = "install elan/lean4; Lean checks are optional"
_HINT_BWRAP = "apt-get install bubblewrap; CodeWorld falls back to rlimits (weaker isolation)"
_HINT_NODE = "apt-get install nodejs (JavaScript strategies only)"
PART_HINTS = {"smt": _HINT_Z3, "coq": _HINT_COQ, "lean4": _HINT_LEAN, "cvc5": _HINT_CVC5,
              "bubblewrap": _HINT_BWRAP}


async def _version(part: str, exe: str, hint: str, *, jailed: bool = False) -> Check:
    """`exe --version`; a `jailed` one (a prover) is the program a jail runs for it."""
    path = jailed_which(exe) if jailed else shutil.which(exe)
    if path is None:
        where = "the provers' PATH (/usr/local/bin:/usr/bin:/bin)" if jailed else "PATH"
        return Check(part, Status.MISSING, f"{exe} not on {where}", hint)
    code, out = await run_command([path, "--version"])
    if code != 0:
        return Check(part, Status.FAILED,
                     f"{exe} --version exited {code}: {one_line(out, last=True)}", hint)
    return Check(part, Status.OK, one_line(out) or path)


async def _optional(check: Awaitable[Check]) -> Check:
    return replace(await check, optional=True)


async def _z3(exe: str) -> Check:
    check = await _version("z3", exe, _HINT_Z3, jailed=True)
    module = "z3-solver module present" if installed("z3") else "z3-solver module absent"
    if check.status is Status.OK:
        return replace(check, detail=f"{check.detail}; {module}")
    return replace(check, detail=f"{check.detail} ({module}; the smt backend runs the binary)")


async def _bubblewrap() -> Check:
    check = await _version("bubblewrap", "bwrap", _HINT_BWRAP)
    if check.status is not Status.OK:
        return check
    bwrap = shutil.which("bwrap") or "bwrap"
    true = shutil.which("true") or "/bin/true"
    code, out = await run_command([bwrap, "--ro-bind", "/", "/", "--unshare-all", true])
    if code != 0:
        return Check("bubblewrap", Status.FAILED,
                     f"{check.detail}, but it cannot create namespaces: "
                     f"{one_line(out, last=True) or f'exit {code}'}",
                     "allow unprivileged user namespaces (sysctl "
                     "kernel.unprivileged_userns_clone=1) or run with privileges; CodeWorld "
                     "falls back to rlimits (weaker isolation)")
    return replace(check, detail=f"{check.detail}; namespaces work")


def tool_checks() -> list[tuple[str, Awaitable[Check]]]:
    from ...prove import ProveSettings

    prove = ProveSettings()
    return [
        ("z3", _z3(prove.z3_path)),
        ("cvc5", _optional(_version("cvc5", prove.cvc5_path, _HINT_CVC5, jailed=True))),
        ("coqc", _version("coqc", prove.coqc_path, _HINT_COQ, jailed=True)),
        ("coqtop", _version("coqtop", prove.coqtop_path, _HINT_COQ, jailed=True)),
        ("lean", _optional(_version("lean", prove.lean_path, _HINT_LEAN, jailed=True))),
        ("bubblewrap", _bubblewrap()),
        ("node", _version("node", "node", _HINT_NODE)),
    ]

