"""The lean4 backend: message parsing, verdicts, and availability (no Lean here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


async def test_fake_lean_process_path(tmp_path: Path) -> None:
    """A stand-in `lean` replaying recorded output exercises the process path."""
    fake = tmp_path / "lean"
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "if '--version' in sys.argv: print('Lean (version 4.0.0, fake)'); sys.exit(0)\n"
                    f"sys.stdout.write(open({str(FIXTURES / 'lean_messages.jsonl')!r}).read())\n"
                    "sys.exit(1)\n")
    fake.chmod(0o755)
    settings = ProveSettings(lean_path=str(fake), scratch_dir=tmp_path)
    async with ProveEngine(settings) as engine:
        info = {b.name: b for b in engine.backends()}["lean4"]
        assert info.available and "fake" in info.version
        result = await engine.check(Obligation("l1", "lean4", statement="theorem x : True :=",
                                               proof="by foo_bar", imports=("Mathlib",)))
    assert result.verdict is Verdict.FAILED
    assert result.message == "unknown identifier 'foo_bar'"
    assert result.source == "import Mathlib\ntheorem x : True :=\nby foo_bar\n"
