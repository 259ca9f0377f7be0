"""Code tools: the bash allowlist, and code tools in CodeWorld's real sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
])
def test_bash_allowlist_accepts(script: str) -> None:
    check_bash(script, DEFAULT_BASH_ALLOWLIST)


@pytest.mark.parametrize("script", [
    "curl http://example.com", "echo hi; rm -rf /", "echo $(whoami)", "echo `id`",
    "ls | python3 -c 'print(1)'", "true && bash -c 'id'",
])
def test_bash_allowlist_refuses(script: str) -> None:
    with pytest.raises(ToolArgumentsError):
        check_bash(script, DEFAULT_BASH_ALLOWLIST)


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    try:
        from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings
    except ImportError as exc:
        pytest.skip(f"CodeWorld's sandbox is not importable yet: {exc}")
    # Our own uid range: RLIMIT_NPROC counts per uid, so sharing uids with another
    # sandbox running on the host (another test session) would make fork fail.
    box = Sandbox(SandboxSettings(workers=1, base_uid=62100))
    try:
        await box.start()
    except Exception as exc:
        pytest.skip(f"CodeWorld's sandbox cannot start here: {exc}")
    try:
        yield box
    finally:
        await box.close()


async def test_code_tools_in_the_real_sandbox(sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(sandbox)
    calls = [{"id": "p", "name": "run_python", "arguments": {"code": "print(sum(range(10)))"}},
             {"id": "e", "name": "run_python", "arguments": {"code": "raise ValueError('x')"}},
             {"id": "t", "name": "run_python", "arguments": {"code": "while True: pass"}}]
    if executor.supports("javascript"):
        calls.append({"id": "j", "name": "run_javascript",
                      "arguments": {"code": "console.log(6 * 7)"}})
    if executor.supports("bash"):
        calls.append({"id": "b", "name": "run_bash",
                      "arguments": {"code": "seq 3 | sort -r | head -n 1"}})
        calls.append({"id": "x", "name": "run_bash", "arguments": {"code": "whoami"}})
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(tool_timeout_seconds=2.0, max_total_seconds=60)
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "run"}])
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["p"].is_error and "45" in out["p"].output
    assert out["e"].is_error and "ValueError" in out["e"].output
    assert out["t"].is_error and "timeout" in out["t"].output
    if "j" in out:
        assert not out["j"].is_error and "42" in out["j"].output
    if "b" in out:
        assert not out["b"].is_error and "3" in out["b"].output
        assert out["x"].is_error and "not allowed" in out["x"].output


RUST_SUM = 'fn main() { let s: u64 = (1..=100).map(|x| x * x).sum(); println!("sum={s}"); }'
RUST_BAD = 'fn main() { let x: u32 = "seven"; println!("{x}"); }'
RUST_PEEK = """\
use std::path::Path;
fn main() {
    let exe = std::env::current_exe().unwrap();
    println!("{} {} {}", Path::new("/root/.cargo").exists(),
             Path::new("/work/main").exists(), exe.starts_with("/tmp"));
    let path = std::env::var("PATH").unwrap();
    let bin = path.split(':').next().unwrap();
    println!("{} {}", Path::new(bin).join("rustc").exists(),
             std::fs::write(Path::new(bin).join("x"), "x").is_err());
    std::process::exit(3);
}
"""


@pytest.fixture
async def rust_sandbox() -> AsyncIterator[Any]:
    """A sandbox that binds the host's Rust toolchain (the real one: it is under /root)."""
    from scillm.server.agent import find_toolchains
    from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings

    rust = find_toolchains(("rust",))["rust"]
    if not rust.found or rust.root is None:
        pytest.skip(f"no Rust toolchain: {rust.reason}")
    box = Sandbox(SandboxSettings(workers=1, base_uid=62110, extra_ro_binds=(rust.root,)))
    try:
        await box.start()
    except Exception as exc:
        pytest.skip(f"CodeWorld's sandbox cannot start here: {exc}")
    try:
        yield box
    finally:
        await box.close()


async def test_rust_compiles_and_runs_in_the_real_sandbox(rust_sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(rust_sandbox)
    assert executor.unavailable("rust") is None
    calls = [{"id": "ok", "name": "run_rust", "arguments": {"code": RUST_SUM}},
             {"id": "bad", "name": "run_rust", "arguments": {"code": RUST_BAD}},
             {"id": "peek", "name": "run_rust", "arguments": {"code": RUST_PEEK}}]
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(languages=("python", "rust"), tool_timeout_seconds=60.0,
                             max_total_seconds=300)
    async with AgentEngine(settings, model, executor) as engine:
        assert "rust" in engine.languages
        assert "run_rust" in {t["function"]["name"] for t in engine.tools()}
        result = await engine.run_to_end([{"role": "user", "content": "run"}])
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["ok"].is_error and "sum=338350" in out["ok"].output
    assert out["bad"].is_error and "mismatched types" in out["bad"].output
    assert "compilation failed" in out["bad"].output
    # The run sees neither the toolchain's hidden parent nor the repo, builds under the
    # private /tmp, cannot write into the toolchain, and its exit status comes back.
    if rust_sandbox.isolation == "bubblewrap":
        assert "false false true\ntrue true" in out["peek"].output, out["peek"].output
    assert out["peek"].is_error and "exit_code: 3" in out["peek"].output


async def test_rust_is_refused_while_the_sandbox_hides_its_toolchain() -> None:
    from scillm.server.agent import SandboxExecutor, Toolchain
    from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings

    chain = {"rust": Toolchain("rust", "/root/.rustup/toolchains/x",
                               "/root/.rustup/toolchains/x/bin/rustc")}
    hidden = SandboxExecutor(Sandbox(SandboxSettings()), toolchains=chain)
    reason = hidden.unavailable("rust")
    assert not hidden.supports("rust") and reason is not None and "extra_ro_binds" in reason
    bound = SandboxSettings(extra_ro_binds=("/root/.rustup/toolchains/x",))
    assert SandboxExecutor(Sandbox(bound), toolchains=chain).supports("rust")


async def test_go_is_not_offered_without_a_toolchain(sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor, find_toolchains

    go = find_toolchains(("go",))["go"]
    if go.found:
        pytest.skip(f"go is installed at {go.root}")
    executor = SandboxExecutor(sandbox)
    reason = executor.unavailable("go")
    assert reason is not None and "go not found" in reason
    settings = AgentSettings(languages=("python", "go"))
    async with AgentEngine(settings, ScriptedModel([{"content": "x"}]), executor) as engine:
        assert engine.languages == ("python",)
        assert "run_go" not in {t["function"]["name"] for t in engine.tools()}


async def test_go_compiles_and_runs_in_the_real_sandbox() -> None:
    from scillm.server.agent import SandboxExecutor, find_toolchains
    from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings

    go = find_toolchains(("go",))["go"]
    if not go.found or go.root is None:
        pytest.skip(f"no Go toolchain: {go.reason}")
    settings = SandboxSettings(workers=1, base_uid=62120, extra_ro_binds=(go.root,))
    async with Sandbox(settings) as box:
        executor = SandboxExecutor(box)
        source = 'package main\nimport "fmt"\nfunc main() { fmt.Println("sum", 6*7) }\n'
        outcome = await executor.execute("go", source, timeout_s=120.0)
        assert outcome.ok and "sum 42" in outcome.stdout, outcome
        bad = await executor.execute("go", "package main\nfunc main() { x := }\n",
                                     timeout_s=120.0)
        assert not bad.ok and "compilation failed" in bad.stderr
