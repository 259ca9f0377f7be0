"""The mutation pass (`make mutate`): mutmut over the security- and truth-critical code.

What is mutated, and by which tests, is `TARGETS` below: each entry names a module, the
functions of it that decide something (a verdict, a key check, a sandbox policy, a jail's
command line, a replay's differences, an error's status), and the fast tests that
exercise them. mutmut (3.x, from PyPI) rewrites each function into many mutants and runs,
for each mutant, the selected tests that call that function; a mutant no test notices
*survives*.

mutmut derives module names from file paths, and our import names come from setup.py's
package mapping (`server/` is `scillm.server`), so the pass runs in a staged copy laid out
as the installed package, `build/mutation/src/scillm/...` (as scripts/lint stages one for
mypy). The repository itself is never changed.

At the end the survivors are written to `docs/mutation.md` (between its generated
markers) and compared with the equivalent mutants explained there: the run fails when a
mutant of a module marked `strict` survives without an explanation.
A run over some targets keeps the other targets' rows from their last run (the
report's `run` column names the date and commit of each).

    scripts/mutate                 # everything (about N minutes on 2 cores; see the report)
    scripts/mutate keys policy     # only these targets (names from TARGETS)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "build" / "mutation"
REPORT = REPO / "docs" / "mutation.md"
BEGIN = "<!-- mutate: begin (written by scripts/mutate) -->"
END = "<!-- mutate: end -->"

#: Import root -> folder, as in setup.py.
ROOTS = {"scillm": "gen/scillm", "scillm/server": "server", "scillm/clients": "clients",
         "scillm/bridges": "bridges"}


@dataclass(frozen=True)
class Target:
    """One module: the functions mutated (names as mutmut mangles them: `x_f` for a
    function, `xǁClassǁmethod` for a method) and the tests that exercise them."""

    name: str
    module: str
    functions: tuple[str, ...]
    tests: tuple[str, ...]
    #: Every survivor must be explained as equivalent in docs/mutation.md.
    strict: bool


def _f(*names: str) -> tuple[str, ...]:
    return tuple(f"x_{n}" if "." not in n else "xǁ{}ǁ{}".format(*n.split(".")) for n in names)


PROVE_TEXT = "tests/server/prove/test_prove_text.py"
COQ = ("tests/server/prove/test_coq_judgement.py", PROVE_TEXT)
SMT = ("tests/server/prove/test_smtlib.py", "tests/server/prove/test_smt_worker.py",
       "tests/server/prove/test_smt_backend.py", "tests/server/prove/test_validation.py",
       PROVE_TEXT)
LEAN = ("tests/server/prove/test_lean_judgement.py", "tests/server/prove/test_lean_backend.py",
        PROVE_TEXT)
KEYS = ("tests/server/test_key_rules.py",)
ERRORS = ("tests/server/test_error_mapping.py",)

TARGETS: tuple[Target, ...] = (
    # Verdicts: strict (every survivor explained as equivalent in docs/mutation.md). The
    # text a verdict reads is part of it: what reaches z3, what Lean is asked, what is
    # refused before a prover runs.
    Target("coq", "scillm.server.prove._coq",
           _f("_verdict", "assumptions", "checks_switched_off", "kernel_assumptions"), COQ,
           strict=True),
    Target("coqworker", "scillm.server.prove._coqworker", _f("flat_listing", "is_closed"),
           COQ, strict=True),
    Target("smt", "scillm.server.prove._smt",
           _f("_Reply.__init__", "_Reply.answer", "Z3Worker.run", "Z3Worker._consistency",
              "Z3Worker._clean", "SmtBackend.check", "_end_of", "_join_errors", "_error"),
           SMT, strict=True),
    Target("smtlib", "scillm.server.prove._smtlib",
           _f("is_command", "line_col", "_quoted_end", "_head", "top_level", "_diag", "pose",
              "_moved"), SMT, strict=True),
    Target("lean", "scillm.server.prove._lean",
           _f("verdict_of", "judge", "_policy", "parse_lean_messages"), LEAN, strict=True),
    Target("leantext", "scillm.server.prove._leantext",
           _f("blank", "declarations", "refused", "_binders_and_type", "audit",
              "parse_axioms_reply", "theorems"), LEAN, strict=True),
    # Keys and the sandbox policy: strict.
    Target("keys", "scillm.server.keys._store",
           _f("hash_key", "KeyRecord.expired", "_new_record", "_row", "_record",
              "SQLiteKeyStore.create", "SQLiteKeyStore.find", "SQLiteKeyStore.add_spend",
              "SQLiteKeyStore.delete"), KEYS, strict=True),
    Target("auth", "scillm.server.keys._auth",
           _f("Principal.key_id", "token_from_metadata", "Authenticator.enabled",
              "Authenticator.authenticate", "Authenticator.authorize",
              "Authenticator.authorize_runs", "Authenticator.account"), KEYS, strict=True),
    Target("windows", "scillm.server.keys._windows",
           _f("MemoryWindows._window", "MemoryWindows.total", "MemoryWindows.add"), KEYS,
           strict=True),
    Target("policy", "scillm.server.codeworld.sandbox._policy",
           _f("check_policy", "_problem", "_open_mode"),
           ("tests/server/codeworld/test_policy.py",), strict=True),
    # Reported, not held to the bar (see docs/mutation.md): the jail's command line,
    # replay, error mapping.
    Target("jail", "scillm.server.jail",
           _f("Jail.command", "Jail.inbox_path", "Jail.env", "Jail._bwrap_args", "_rlimits"),
           ("tests/server/test_jail.py",), strict=False),
    Target("replay", "scillm.server.manifests._replay",
           _f("_strip", "split", "_split_rankings", "comparable", "differences"),
           ("tests/server/test_replay_rules.py",
            "tests/server/codeworld/test_replay.py::test_split_keeps_deterministic_metrics_"
            "and_moves_ranks_apart"), strict=False),
    Target("errors", "scillm.server.errors", _f("status_for", "to_status"), ERRORS,
           strict=False),
    Target("http-errors", "scillm.bridges.openai.errors", _f("error_body", "from_exception"),
           ERRORS, strict=False),
)


def stage() -> None:
    """build/mutation: the package as installed (src/scillm/...), tests, README, and a
    pyproject.toml with pytest's settings and mutmut's."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in ROOTS.items():
        shutil.copytree(REPO / folder, STAGE / "src" / name, ignore=ignore,
                        dirs_exist_ok=True)
    shutil.copytree(REPO / "tests", STAGE / "tests", ignore=ignore)
    shutil.copy2(REPO / "README.md", STAGE / "README.md")


def configure(targets: list[Target]) -> None:
    tests = sorted({t for target in targets for t in target.tests})
    files = sorted({"src/" + target.module.replace(".", "/") + ".py" for target in targets})
    (STAGE / "pyproject.toml").write_text(f"""\
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
timeout = 60

[tool.mutmut]
source_paths = ["src"]
only_mutate = {json.dumps(files)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = {json.dumps(tests)}
process_isolation = "forkserver"
use_git_change_detection = false
""")


def run_mutmut(targets: list[Target], children: int) -> None:
    names = [f"{t.module}.{f}__mutmut_*" for t in targets for f in t.functions]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = str(Path(sys.executable).parent / "mutmut")
    subprocess.run([mutmut, "run", "--max-children", str(children), *names], cwd=STAGE,
                   env=env, check=True)


def results(targets: list[Target]) -> dict[str, dict[str, str]]:
    """Per target: mutant name -> status (mutmut's words), read from its meta files."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, dict[str, str]] = {}
    for target in targets:
        meta = STAGE / "mutants" / ("src/" + target.module.replace(".", "/") + ".py.meta")
        data = json.loads(meta.read_text())
        chosen = tuple(f"{target.module}.{f}__mutmut_" for f in target.functions)
        codes = sorted(data["exit_code_by_key"].items())
        out[target.name] = {name: status_by_exit_code[code] for name, code in codes
                            if name.startswith(chosen)}
    return out


def diff_of(name: str) -> str:
    mutmut = str(Path(sys.executable).parent / "mutmut")
    shown = subprocess.run([mutmut, "show", name], cwd=STAGE, capture_output=True, text=True,
                           check=False)
    lines = [ln for ln in shown.stdout.splitlines()
             if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return " / ".join(ln.strip() for ln in lines)[:300]


def explained() -> set[str]:
    """Mutants docs/mutation.md explains as equivalent (a `### <mutant name>` heading)."""
    text = REPORT.read_text() if REPORT.exists() else ""
    return set(re.findall(r"^### `([^`]+)`", text, re.MULTILINE))


def _previous(text: str) -> tuple[dict[str, str], list[str]]:
    """From the generated part of the report: each target's row (by name, with its run
    column) and the survivor rows, so a run over some targets keeps the others' results."""
    section = text[text.index(BEGIN):text.index(END)]
    rows: dict[str, str] = {}
    survivors: list[str] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `scillm."):
            survivors.append(line)
        elif len(cells) >= 8 and cells[1].startswith("`scillm."):
            rows[cells[0]] = line if len(cells) > 8 else line + " — |"
    return rows, survivors


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *ROOTS.values(), "tests"],
                           cwd=REPO, text=True, capture_output=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def write_report(targets: list[Target], found: dict[str, dict[str, str]],
                 seconds: float, commit: str) -> list[str]:
    """Rewrite the generated part of docs/mutation.md; return unexplained strict survivors.

    Targets not run this time keep their previous rows (the `run` column says when and at
    which commit each was measured)."""
    known = explained()
    text = REPORT.read_text()
    kept_rows, kept_survivors = _previous(text)
    run = f"{time.strftime('%Y-%m-%d')} {commit}"
    ran = {t.name for t in targets}
    rows = ["| target | module | mutants | killed | survived | no tests | timeout | strict | run |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    survivors: list[str] = []
    failing: list[str] = []
    for target in TARGETS:
        if target.name not in ran:
            if target.name in kept_rows:
                rows.append(kept_rows[target.name])
            for row in kept_survivors:
                if row.startswith(f"| `{target.module}."):
                    name = row.split("`")[1]
                    survivors.append(row.replace("| survived |", "| equivalent (explained "
                                                 "below) |") if name in known else row)
            continue
        statuses = list(found[target.name].values())
        count = {s: statuses.count(s) for s in ("killed", "survived", "no tests", "timeout")}
        rows.append(f"| {target.name} | `{target.module}` | {len(statuses)} | "
                    f"{count['killed']} | {count['survived']} | {count['no tests']} | "
                    f"{count['timeout']} | {'yes' if target.strict else 'no'} | {run} |")
        for name, status in found[target.name].items():
            if status in ("survived", "no tests"):
                mark = "equivalent (explained below)" if name in known else status
                survivors.append(f"| `{name}` | {mark} | `{diff_of(name)}` |")
                if target.strict and name not in known:
                    failing.append(name)
    generated = "\n".join([
        BEGIN,
        f"Last run: {time.strftime('%Y-%m-%d')}, {len(targets)} targets, "
        f"{seconds / 60:.0f} minutes on {os.cpu_count()} cores "
        f"(`scripts/mutate {' '.join(t.name for t in targets)}`); the other targets' rows "
        "are from the run their `run` column names.",
        "",
        *rows,
        "",
        "Mutants that no test killed:",
        "",
        "| mutant | status | change |",
        "| --- | --- | --- |",
        *(survivors or ["| (none) | | |"]),
        END,
    ])
    start, end = text.index(BEGIN), text.index(END) + len(END)
    REPORT.write_text(text[:start] + generated + text[end:])
    stale = sorted(name for name in known for target in targets
                   if name.startswith(f"{target.module}.")
                   and found[target.name].get(name) not in ("survived", "no tests"))
    if stale:
        # mutmut numbers mutants by position: after the code changes, an old name may
        # belong to another mutant, and its explanation would excuse the wrong one.
        print("mutate: docs/mutation.md explains mutants that no longer survive (remove "
              "or re-check them):", *stale, sep="\n  ", file=sys.stderr)
    return failing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutate", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="target names (default: all): "
                        + ", ".join(t.name for t in TARGETS))
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    unknown = set(args.targets) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    targets = [t for t in TARGETS if not args.targets or t.name in args.targets]
    started, commit = time.monotonic(), _commit()
    stage()
    configure(targets)
    run_mutmut(targets, args.children)
    failing = write_report(targets, results(targets), time.monotonic() - started,
                           commit)
    print(f"mutate: report written to {REPORT.relative_to(REPO)}")
    if failing:
        print("mutate: survivors in strict targets that docs/mutation.md does not explain:",
              *failing, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
