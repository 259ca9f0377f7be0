"""The lean4 backend: message parsing, the audit's verdicts, availability (no Lean here).

No Lean toolchain installs on this machine kind, so the process path runs against a
stand-in `lean` (in the jail, like the real one) that answers the checker's audit the way
Lean documents it: `#print axioms X` -> an information message at that line,
"'X' depends on axioms: [...]" or "'X' does not depend on any axioms"; an ill-typed
`example` -> an error at its line; `sorry` -> the "declaration uses 'sorry'" warning.
What the stand-in answers for each name is the scenario of the test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from scillm.server.jail import JailSettings
from scillm.server.prove import (
    BackendUnavailable,
    Diagnostic,
    Obligation,
    ProveEngine,
    ProveSettings,
    Verdict,
    parse_lean_messages,
)
from scillm.server.prove._lean import verdict_of

FIXTURES = Path(__file__).parent / "fixtures"

FAKE_LEAN = r'''
import json, os, re, sys
WORLD = json.loads(%r)
if "--version" in sys.argv:
    print("Lean (version 4.9.0, fake)")
    sys.exit(0)
lines = open(sys.argv[-1], encoding="utf-8").read().splitlines()
failed = False
def say(severity, line, data):
    print(json.dumps({"severity": severity, "pos": {"line": line, "column": 0},
                      "endPos": None, "fileName": sys.argv[-1], "data": data, "caption": ""}))
for severity, line, data in WORLD.get("messages", []):
    say(severity, line, data)
    failed = failed or severity == "error"
for number, text in enumerate(lines, 1):
    m = re.match(r"#print axioms _root_\.(\S+)$", text)
    if m:
        axioms = WORLD["axioms"].get(m.group(1))
        shown = WORLD.get("rename", {}).get(m.group(1), m.group(1))
        if axioms is None:
            say("error", number, "unknown constant '%%s'" %% m.group(1))
            failed = True
        elif axioms:
            say("information", number,
                "'%%s' depends on axioms: [%%s]" %% (shown, ", ".join(axioms)))
        else:
            say("information", number, "'%%s' does not depend on any axioms" %% shown)
        for forged in WORLD.get("forge_at_audit", []):
            say("information", number, forged)
    elif text.startswith("example : ") and not WORLD.get("type_ok", True):
        say("error", number, "type mismatch")
        failed = True
sys.stdout.flush()
sys.stderr.write(WORLD.get("stderr", ""))
sys.stderr.flush()
if WORLD.get("signal"):
    os.kill(os.getpid(), WORLD["signal"])
sys.exit(WORLD.get("exit", 1 if failed else 0))
'''


def fake_lean(tmp_path: Path, world: dict[str, Any]) -> ProveSettings:
    """Settings whose `lean` is the stand-in answering `world`, visible in the jail."""
    bin_dir = tmp_path / "toolchain" / "bin"
    bin_dir.mkdir(parents=True)
    for d in (tmp_path / "toolchain", bin_dir):
        d.chmod(0o755)
    python = os.path.realpath(sys.executable)
    lean = bin_dir / "lean"
    lean.write_text(f"#!{python} -IS\n" + FAKE_LEAN % json.dumps(world))
    lean.chmod(0o755)
    prefix = str(Path(python).parent.parent)
    return ProveSettings(lean_path=str(lean), scratch_dir=tmp_path,
                         jail=JailSettings(ro_binds=(prefix,)))


async def lean_check(tmp_path: Path, world: dict[str, Any], statement: str, proof: str = "",
                     **kw: Any) -> Any:
    async with ProveEngine(fake_lean(tmp_path, world)) as engine:
        info = {b.name: b for b in engine.backends()}["lean4"]
        assert info.available and "fake" in info.version, info.reason
        return await engine.check(Obligation("l1", "lean4", statement=statement, proof=proof,
                                             **kw))


def test_parser_reads_recorded_messages() -> None:
    diagnostics = parse_lean_messages((FIXTURES / "lean_messages.jsonl").read_text())
    assert diagnostics == [
        Diagnostic("error", "unknown identifier 'foo_bar'", 3, 2, 3, 9),
        Diagnostic("warning", "declaration uses 'sorry'", 1, 8, 1, 16),
        Diagnostic("info", "2", 5, 0, None, None),
    ]


def test_non_json_lines_become_errors() -> None:
    assert parse_lean_messages("uncaught exception: boom\n") == [
        Diagnostic("error", "uncaught exception: boom")]


def test_verdicts() -> None:
    sorry = Diagnostic("warning", "declaration uses 'sorry'", 1, 8, 1, 16)
    assert verdict_of(0, [])[0] is Verdict.PROVED
    assert verdict_of(0, [sorry]) == (Verdict.FAILED, "the proof uses sorry")
    assert verdict_of(1, [Diagnostic("error", "bad", 1, 0)])[0] is Verdict.FAILED
    assert verdict_of(1, [])[0] is Verdict.FAILED
    assert verdict_of(0, [Diagnostic("info", "2", 5, 0)])[0] is Verdict.PROVED


async def test_unavailable_without_lean(engine: ProveEngine) -> None:
    info = {b.name: b for b in engine.backends()}["lean4"]
    assert not info.available
    assert "not on PATH" in info.reason
    with pytest.raises(BackendUnavailable) as raised:
        engine.run_batch([Obligation("l1", "lean4", statement="theorem x : True := trivial")])
    assert raised.value.item_id == "l1"


async def test_a_clean_theorem_is_proved(tmp_path: Path) -> None:
    result = await lean_check(tmp_path, {"axioms": {"Demo.add0": ["propext"]}},
                              "namespace Demo\ntheorem add0 (n : Nat) : n + 0 = n := by simp",
                              "end Demo", imports=("Mathlib",))
    assert result.verdict is Verdict.PROVED, result.diagnostics
    assert result.source == ("import Mathlib\nnamespace Demo\ntheorem add0 (n : Nat) : "
                             "n + 0 = n := by simp\nend Demo\n")


async def test_errors_are_reported_as_located_diagnostics(tmp_path: Path) -> None:
    world = {"axioms": {"x": []}, "messages": [["error", 3, "unknown identifier 'foo_bar'"]]}
    result = await lean_check(tmp_path, world, "theorem x : True :=", "by foo_bar",
                              imports=("Mathlib",))
    assert result.verdict is Verdict.FAILED
    assert result.message == "unknown identifier 'foo_bar'"
    assert (result.diagnostics[0].line, result.diagnostics[0].column) == (3, 0)


@pytest.mark.parametrize(("world", "statement", "proof", "wanted"), [
    ({"axioms": {"t": ["sorryAx"]}, "messages": [["warning", 1, "declaration uses 'sorry'"]]},
     "theorem t : 1 = 2 :=", "sorry", "the proof uses sorry"),
    ({"axioms": {"t": ["sorryAx"]}}, "theorem t : 1 = 2 :=", "by exact?",
     "t depends on axioms: sorryAx"),
    ({"axioms": {"cheat": ["cheat"], "t": ["cheat"]}},
     "axiom cheat : False\ntheorem t : 1 = 2 :=", "cheat.elim", "cheat depends on axioms: cheat"),
    ({"axioms": {"t": ["Lean.ofReduceBool", "Lean.trustCompiler"]}},
     "theorem t : 2 ^ 64 > 1 :=", "by native_decide", "t depends on axioms: Lean.ofReduceBool"),
    ({"axioms": {"t": []}, "type_ok": False},
     "section\nvariable (h : 1 = 2)\ninclude h\ntheorem t : 1 = 2 :=", "h\nend",
     "t does not have the stated type"),
    ({"axioms": {"helper": ["sorryAx"], "t": []}},
     "theorem t : True :=", "trivial\ntheorem helper : 1 = 2 := by omega_nat_bad",
     "helper depends on axioms: sorryAx"),
    ({"axioms": {"t": ["sorryAx"]}, "messages": [["information", 2,
                                                   "'t' does not depend on any axioms"]]},
     "theorem t : 1 = 2 :=", "sorry_free_looking", "t depends on axioms: sorryAx"),
    ({"axioms": {"t": ["sorryAx"]}, "forge_at_audit": ["'t' does not depend on any axioms"]},
     "theorem t : 1 = 2 :=", "by forge", "Lean gave no single answer"),
    ({"axioms": {}}, "theorem t : 1 = 2 :=", "by unknown_name",
     "Lean gave no single answer"),
])
async def test_lean_escapes_are_never_proved(tmp_path: Path, world: dict[str, Any],
                                             statement: str, proof: str, wanted: str) -> None:
    result = await lean_check(tmp_path, world, statement, proof)
    assert result.verdict is Verdict.FAILED, result
    said = [result.message, *(d.message for d in result.diagnostics)]
    assert any(wanted in text for text in said), said


@pytest.mark.parametrize(("statement", "proof", "word"), [
    ("theorem t : 1 = 2 :=", "by sorry\n#eval IO.println \"ok\"", "#eval"),
    ("macro \"#print\" \"axioms\" x:ident : command => `(#check 0)\ntheorem t : 1 = 2 :=",
     "sorry", "macro"),
    ("set_option debug.skipKernelTC true\ntheorem t : 1 = 2 :=", "by decide",
     "debug.skipKernelTC"),
    ("theorem t : True :=", "trivial\nexample : 1 = 2 := by native_decide", "example"),
    ("notation \"⊤⊤\" => True\ntheorem t : ⊤⊤ :=", "trivial", "notation"),
    ("elab_rules : command | `(#print axioms $x) => pure ()\ntheorem t : 1 = 2 :=", "sorry",
     "elab_rules"),
])
async def test_commands_that_could_forge_the_audit_are_refused(
        tmp_path: Path, statement: str, proof: str, word: str) -> None:
    result = await lean_check(tmp_path, {"axioms": {"t": []}}, statement, proof)
    assert result.verdict is Verdict.FAILED
    assert f"`{word}`" in result.message


@pytest.mark.parametrize(("source", "word"), [
    # A Char literal '"' is not the start of a string: what follows is read as code.
    ("theorem t : True := by\n  have : Char := '\"'\n  run_tac pure ()\n"
     "  have : Char := '\"'\n  trivial", "run_tac"),
    ('def s := s!"{by_elab pure ()}"\ntheorem t : True := trivial', "by_elab"),
    ("theorem t : True := by\n  exact (dbg_trace \"x\"; trivial)", "dbg_trace"),
    ("set_option debug.skipKernelTC true in\ntheorem t : 1 = 2 := by decide", "debug.skipKernelTC"),
    ('def x := r#"a " -/ "#\n#eval IO.Process.exit 0\ntheorem t : True := trivial', "#eval"),
])
def test_code_that_runs_at_elaboration_is_found_wherever_it_hides(source: str,
                                                                   word: str) -> None:
    from scillm.server.prove._leantext import refused

    found = refused(source)
    assert found is not None and found[0] == word, found


async def test_an_answer_about_another_name_does_not_count(tmp_path: Path) -> None:
    """A clean answer at the audit's line counts only if it names the declaration asked
    about (a forged or misplaced answer about another name does not)."""
    world = {"axioms": {"t": []}, "rename": {"t": "helper"}}
    result = await lean_check(tmp_path, world, "theorem t : 1 = 2 :=", "by forge")
    assert result.verdict is Verdict.FAILED
    assert "no single answer" in result.message


async def test_what_a_proof_prints_does_not_make_it_an_error(tmp_path: Path) -> None:
    """An info message saying "out of memory" (what `#eval` or `IO.println` printed) made a
    proved theorem ERROR, "lean crashed"."""
    world = {"axioms": {"x": []}, "messages": [["info", 3, "out of memory"]]}
    result = await lean_check(tmp_path, world, "theorem x : True :=", "trivial",
                              imports=("Mathlib",))
    assert result.verdict is Verdict.PROVED, result


#: Lean's runtime, when an allocation fails (`lean_internal_panic_out_of_memory`).
PANIC = "INTERNAL PANIC: out of memory\n"


@pytest.mark.parametrize(("world", "verdict"), [
    # An error message quoting the item ("out of memory" as a string in a type mismatch):
    # it made the item's own FAILED an ERROR. Lean's messages quote the item; no text of
    # theirs makes an ERROR.
    ({"messages": [["error", 2, 'type mismatch\n  "out of memory"\nhas type String']]},
     Verdict.FAILED),
    ({"messages": [["error", 2, "(kernel) out of memory"]]}, Verdict.FAILED),
    # What the lean process reports of itself: its runtime's panic on standard error and
    # exit 1, or death by a signal (the jail's limits, a crash).
    ({"stderr": PANIC, "exit": 1}, Verdict.ERROR),
    ({"signal": 9}, Verdict.ERROR),
    ({"signal": 6, "stderr": "INTERNAL PANIC: out of memory\n"}, Verdict.ERROR),
])
async def test_only_the_lean_process_itself_makes_an_item_an_error(
        tmp_path: Path, world: dict[str, Any], verdict: Verdict) -> None:
    result = await lean_check(tmp_path, {"axioms": {"t": []}, **world},
                              "theorem t : \"out of memory\" = \"x\" :=", "rfl")
    assert result.verdict is verdict, result
    assert ("lean crashed" in result.message) == (verdict is Verdict.ERROR), result.message


def test_a_crash_is_read_from_the_process_not_from_messages() -> None:
    from scillm.server.prove._lean import crashed

    assert crashed(-9, "") and crashed(137, "") and crashed(1, "INTERNAL PANIC: out of memory\n")
    assert not crashed(0, "INTERNAL PANIC: out of memory\n")  # it exits 1
    assert not crashed(1, "error: out of memory in the string 'INTERNAL PANIC: out of "
                          "memory'\n")
    assert not crashed(1, "")


async def test_a_control_character_in_a_callers_item_is_named_where_it_is(
        tmp_path: Path) -> None:
    """As for Coq and z3: FAILED naming the character and where it is, before lean runs
    (the stand-in, which reads no token, said PROVED)."""
    result = await lean_check(tmp_path, {"axioms": {"t": []}}, "theorem t : True :=",
                              "by\n  triv\x1bial")
    assert result.verdict is Verdict.FAILED, result
    (d,) = result.diagnostics
    assert "the control character U+001B" in d.message, d
    assert (d.line, d.column) == (3, 6) and result.source.split("\n")[2][6] == "\x1b"
    assert "line 3, column 7" in result.message, result.message
