"""Code tools: the bash allowlist, and code tools in CodeWorld's real sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scillm.server.agent import (
    DEFAULT_BASH_ALLOWLIST,
    AgentEngine,
    AgentSettings,
    ScriptedModel,
    StopReason,
    check_bash,
)
from scillm.server.agent.errors import ToolArgumentsError


@pytest.mark.parametrize("script", [
    "echo hi | tr a-z A-Z",
    "for i in 1 2 3; do echo $i; done",
    "x=3\nif test $x -gt 2; then echo big; else echo small; fi",
    "seq 5 | sort -r | head -n 2 > /tmp/out 2>&1 && cat /tmp/out",
    "< /tmp/in sort > /tmp/out", "cat <<< hi",
    "# count the lines\nwc -l /tmp/in  # then done", "echo '# not a comment'; echo $#",
    "echo ${#x} a#b",
])
def test_bash_allowlist_accepts(script: str) -> None:
    check_bash(script, DEFAULT_BASH_ALLOWLIST)


@pytest.mark.parametrize("script", [
    "curl http://example.com", "echo hi; rm -rf /", "echo $(whoami)", "echo `id`",
    "ls | python3 -c 'print(1)'", "true && bash -c 'id'",
    # A redirection before the command: its file is one word, the command the next.
    "</dev/null id", "> /tmp/x id -u", "echo a; 2>&1 >/dev/null curl x", "<<< x bash",
    # `#` starts a comment only at the start of a word, and only to the end of its line:
    # the checker's lexer took the rest of the script for a comment.
    "echo start # a comment\nid", "echo a#b; id", "echo a#b\nid", "echo '#'; id",
    "echo \"x # y\"; id",
])
def test_bash_allowlist_refuses(script: str) -> None:
    with pytest.raises(ToolArgumentsError):
        check_bash(script, DEFAULT_BASH_ALLOWLIST)


async def test_code_tools_in_the_real_sandbox(sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(sandbox)
    calls = [{"id": "p", "name": "run_python", "arguments": {"code": "print(sum(range(10)))"}},
             {"id": "e", "name": "run_python", "arguments": {"code": "raise ValueError('x')"}},
             {"id": "t", "name": "run_python", "arguments": {"code": "while True: pass"}},
             {"id": "j", "name": "run_javascript", "arguments": {"code": "console.log(6 * 7)"}},
             {"id": "b", "name": "run_bash",
              "arguments": {"code": "seq 3 | sort -r | head -n 1"}},
             {"id": "x", "name": "run_bash", "arguments": {"code": "whoami"}}]
    # node and bash are installed (scripts/install): these tools must be offered.
    assert executor.supports("javascript") and executor.supports("bash")
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(tool_timeout_seconds=2.0, max_total_seconds=60)
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "run"}])
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["p"].is_error and "45" in out["p"].output
    assert out["e"].is_error and "ValueError" in out["e"].output
    assert out["t"].is_error and "timeout" in out["t"].output
    assert not out["j"].is_error and "42" in out["j"].output
    assert not out["b"].is_error and "3" in out["b"].output
    assert out["x"].is_error and "not allowed" in out["x"].output


HELLO = {
    "typescript": "const n: number = 6 * 7;\nconsole.log(`sum=${n}`);\n",
    "c": '#include <stdio.h>\nint main(void) { printf("sum=%d\\n", 6 * 7); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "sum=" << 6 * 7 << std::endl; }\n',
    "java": 'public class Hello {\n  public static void main(String[] a) {\n'
            '    System.out.println("sum=" + 6 * 7);\n  }\n}\n',
    "rust": 'fn main() { let s: u64 = (1..=100).map(|x| x * x).sum(); '
            'println!("sum={}", s / 338350 * 42); }',
    "go": 'package main\nimport "fmt"\nfunc main() { fmt.Println("sum=42") }\n',
}
BROKEN = {
    "typescript": 'const x: number = "seven";\n',
    "c": "int main(void) { return x; }\n",
    "cpp": "int main() { return y; }\n",
    "java": "public class Main { public static void main(String[] a) { int x = \"s\"; } }\n",
    "rust": 'fn main() { let x: u32 = "seven"; println!("{x}"); }',
    "go": "package main\nfunc main() { x := }\n",
}
# The program sees neither the hidden homes nor the repository, and cannot write next to
# its own binary (the compile cache is read-only in the sandbox); its exit status comes back.
# The project's files (this test file among them) stay hidden even where one of its
# directories is bound in read-only (the TypeScript compiler under .tools/).
RUST_PEEK = """\
use std::path::Path;
fn main() {
    let exe = std::env::current_exe().unwrap();
    println!("{} {} {}", Path::new("/root/.cargo").exists(), Path::new("THIS_FILE").exists(),
             std::fs::write(exe.with_file_name("x"), "x").is_err());
    std::process::exit(3);
}
""".replace("THIS_FILE", str(Path(__file__).resolve()))


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_compiled_languages_in_the_real_sandbox(sandbox: Any, language: str) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(sandbox)
    # scripts/install installs every language's toolchain: a missing one is a failure.
    assert executor.supports(language), executor.unavailable(language)
    calls = [{"id": "ok", "name": f"run_{language}", "arguments": {"code": HELLO[language]}},
             {"id": "bad", "name": f"run_{language}",
              "arguments": {"code": BROKEN[language]}}]
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(languages=("python", language), tool_timeout_seconds=60.0,
                             max_total_seconds=300)
    async with AgentEngine(settings, model, executor) as engine:
        assert language in engine.languages
        assert f"run_{language}" in {t["function"]["name"] for t in engine.tools()}
        result = await engine.run_to_end([{"role": "user", "content": "run"}])
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["ok"].is_error and "sum=42" in out["ok"].output, out["ok"].output
    assert out["bad"].is_error and "compilation failed" in out["bad"].output
    assert "error" in out["bad"].output.split("compilation failed", 1)[1]


async def test_a_compiled_program_is_contained_and_its_exit_status_returned(
        sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(sandbox)
    assert executor.supports("rust"), executor.unavailable("rust")
    outcome = await executor.execute("rust", RUST_PEEK, timeout_s=60.0)
    assert sandbox.isolation == "bubblewrap"  # installed by scripts/install
    assert outcome.stdout.strip() == "false false true", outcome
    assert not outcome.ok and outcome.exit_code == 3 and outcome.status == "error"


async def test_a_language_without_its_toolchain_is_not_offered() -> None:
    from scillm.server.agent import SandboxExecutor
    from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings

    async with Sandbox(SandboxSettings(workers=1, base_uid=62120,
                                       languages=("python",))) as box:
        executor = SandboxExecutor(box)
        reason = executor.unavailable("go")
        assert reason is not None and "not enabled" in reason
        settings = AgentSettings(languages=("python", "go", "rust"))
        async with AgentEngine(settings, ScriptedModel([{"content": "x"}]), executor) as engine:
            assert engine.languages == ("python",)
            assert "run_go" not in {t["function"]["name"] for t in engine.tools()}


@pytest.mark.parametrize(("language", "needs"), [
    ("c", "gcc"), ("cpp", "g++"), ("java", "javac"), ("go", "go"), ("rust", "rustc")])
def test_a_missing_compiler_is_reported_with_its_name(language: str, needs: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from scillm.server.codeworld.sandbox import Language
    from scillm.server.codeworld.sandbox._toolchains import find_toolchain

    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.cargo/bin fallback either
    chain = find_toolchain(Language(language), python="/usr/bin/python3", node=None,
                           which=lambda name: None)
    assert not chain.available and needs in chain.reason
