"""The jail provers run in, asked from inside with real programs (sh, id, cat)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from flocks import locked_by_me

from scillm.server.jail import INBOX, Jail, JailSettings, JailUnavailable
from scillm.server.prove import Obligation, ProveEngine, ProveSettings, Verdict


async def _run(jail: Jail, script: str, inbox: Path | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *jail.command(["/bin/sh", "-c", script], memory_mb=256, inbox=inbox),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=jail.env)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_what_a_jailed_program_sees(tmp_path: Path) -> None:
    jail = await Jail.probe(JailSettings(isolation="bubblewrap"))
    assert jail.isolation == "bubblewrap"
    inbox = tmp_path / "inbox"
    inbox.mkdir(mode=0o755)
    (inbox / "item.txt").write_text("hello")
    (inbox / "item.txt").chmod(0o644)
    host_secret = tmp_path / "secret"
    host_secret.write_text("s3cret")
    scratch = f"/tmp/scillm-jail-{tmp_path.name}"
    code, out = await _run(jail, f"""
        id -u; cat {INBOX}/item.txt; echo
        test -e /etc/passwd && echo passwd-visible
        test -e {host_secret} && echo host-file-visible
        test -e /root && ls /root
        echo x > {INBOX}/new 2>/dev/null && echo inbox-writable
        echo x > /usr/x 2>/dev/null && echo usr-writable
        echo x > {scratch} && cat {scratch}
        echo interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1) :end
        ls /proc | grep -c '^[0-9]'
    """, inbox)
    lines = out.split()
    assert code == 0, out
    if os.geteuid() == 0:
        assert lines[0] == str(jail.uid)
    assert "hello" in lines
    for leak in ("passwd-visible", "host-file-visible", "inbox-writable", "usr-writable"):
        assert leak not in lines, out
    assert "x" in lines  # /tmp is writable inside
    interfaces = lines[lines.index("interfaces:") + 1:lines.index(":end")]
    assert interfaces == ["lo"], out  # its own network namespace: no way out
    assert int(lines[-1]) <= 5  # its own pid namespace: bwrap's init, sh, ls, grep
    assert not _exists(inbox / "new") and not _exists(Path(scratch))


def _exists(path: Path) -> bool:
    return path.exists()


async def test_memory_is_limited() -> None:
    jail = await Jail.probe(JailSettings(isolation="bubblewrap"))
    proc = await asyncio.create_subprocess_exec(
        *jail.command(["/bin/sh", "-c", "ulimit -v"], memory_mb=300),
        stdout=asyncio.subprocess.PIPE, env=jail.env)
    out, _ = await proc.communicate()
    assert int(out) == 300 * 1024


async def test_a_required_bubblewrap_that_does_not_work_is_an_error() -> None:
    with pytest.raises(JailUnavailable):
        await Jail.probe(JailSettings(isolation="bubblewrap", bwrap_path="/bin/false"))


async def test_provers_without_bubblewrap_still_check_and_say_so(tmp_path: Path) -> None:
    settings = ProveSettings(scratch_dir=tmp_path, jail=JailSettings(isolation="rlimits"))
    async with ProveEngine(settings) as engine:
        assert engine.isolation == "rlimits"
        coq = await engine.check(Obligation("c", "coq", statement="Theorem t : 1 + 1 = 2.",
                                            proof="Proof. reflexivity. Qed."))
        smt = await engine.check(Obligation("s", "smt", statement="(> 2 1)"))
        bad = await engine.check(Obligation("b", "coq", statement="Theorem t : 1 = 2.",
                                            proof="Proof. Admitted."))
    assert coq.verdict is Verdict.PROVED and smt.verdict is Verdict.PROVED
    assert bad.verdict is Verdict.FAILED


async def test_without_bubblewrap_coq_is_not_run_unless_the_operator_says_so(
        tmp_path: Path) -> None:
    """A silent fallback never lets Coq (Load, Redirect, Extraction) touch the host: without
    a working bubblewrap only z3 runs, until the operator opts in with rlimits."""
    from scillm.server.prove import BackendUnavailable

    settings = ProveSettings(scratch_dir=tmp_path,
                             jail=JailSettings(isolation="auto", bwrap_path="/bin/false"))
    async with ProveEngine(settings) as engine:
        assert engine.isolation == "rlimits"
        info = {b.name: b for b in engine.backends()}
        assert info["smt"].available
        assert not info["coq"].available and "SCILLM_PROVE_ISOLATION" in info["coq"].reason
        with pytest.raises(BackendUnavailable):
            engine.run_batch([Obligation("c", "coq", statement="Theorem t : True.",
                                         proof="Proof. exact I. Qed.")])
        smt = await engine.check(Obligation("s", "smt", statement="(> 2 1)"))
    assert smt.verdict is Verdict.PROVED


@pytest.mark.skipif(os.geteuid() != 0, reason="uids are dropped only when the host is root")
async def test_jails_on_one_host_never_share_a_uid() -> None:
    """Each jail claims a uid of its own (as sandboxes do), so one jail's processes never
    count against, or can signal, another's."""
    first = await Jail.probe(JailSettings(isolation="bubblewrap"))
    second = await Jail.probe(JailSettings(isolation="bubblewrap"))
    locks = [jail._claim.path for jail in (first, second) if jail._claim is not None]
    try:
        assert first.uid is not None and second.uid is not None
        assert first.uid != second.uid
        _, out = await _run(second, "id -u")
        assert out.split() == [str(second.uid)]
        assert len(locks) == 2 and all(path and locked_by_me(path) for path in locks)
    finally:
        first.release()
        second.release()
    # Released: this process holds neither lock any more (the kernel's view, so another
    # process on the host claiming a range meanwhile cannot change the answer).
    assert not any(path and locked_by_me(path) for path in locks)

