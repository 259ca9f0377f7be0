"""The sandbox runs code and contains it; after every escape attempt it still works."""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from flocks import locked_by_me

from scillm.server.codeworld.errors import InvalidLimits, InvalidSource, PolicyViolation
from scillm.server.codeworld.sandbox import (
    BUBBLEWRAP,
    Limits,
    Sandbox,
    SandboxSettings,
    Status,
)

LIVE = ("import os\n"
        "def live():\n"
        "    found = []\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if p.isdigit() and open(f'/proc/{p}/stat').read().split()[2] != 'Z':\n"
        "                found.append(p)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return found\n")
ECHO = "def solve(task, context):\n    return context['x'] * 2\n"


async def _still_works(box: Sandbox) -> None:
    ran = await box.run("python", ECHO, entry="solve", args=[{}, {"x": 21}])
    assert ran.status is Status.OK and ran.result == 42


@pytest.fixture
async def single() -> AsyncIterator[Sandbox]:
    """One worker, so consecutive runs share a sandbox (and its pid namespace)."""
    async with Sandbox(SandboxSettings(workers=1, limits=Limits(wall_time=3.0))) as box:
        yield box


async def test_runs_a_function_with_output_and_timings(sandbox: Sandbox) -> None:
    source = "def solve(task, context):\n    print('hello')\n    return [context['x'], 'y']\n"
    ran = await sandbox.run("python", source, entry="solve", args=[{}, {"x": 1}])
    assert (ran.status, ran.result, ran.stdout) == (Status.OK, [1, "y"], "hello\n")
    assert ran.wall > 0 and ran.peak_memory > 0 and ran.isolation == sandbox.isolation


async def test_bubblewrap_is_used_when_present(sandbox: Sandbox) -> None:
    assert shutil.which("bwrap"), "bubblewrap is missing: scripts/install installs it"
    assert sandbox.isolation == BUBBLEWRAP


async def test_script_reads_stdin(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "import sys\nprint(sys.stdin.read().upper())", stdin="abc")
    assert ran.status is Status.OK and ran.stdout == "ABC\n"


async def test_exception_is_an_error_status(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "def f():\n    raise KeyError('k')\n", entry="f")
    assert (ran.status, ran.error_type, ran.reason) == (Status.ERROR, "KeyError", "exception")
    assert "KeyError" in ran.stderr


async def test_missing_entry_point(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "x = 1\n", entry="solve")
    assert ran.status is Status.ERROR and ran.reason == "entry_missing"


async def test_unserialisable_result(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "def f():\n    return object()\n", entry="f")
    assert ran.status is Status.ERROR and ran.reason == "unserialisable"


async def test_output_is_capped(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "print('x' * 10**6)", limits=Limits(output=1000))
    assert ran.status is Status.OK and ran.truncated and len(ran.stdout) == 1000


async def test_javascript(sandbox: Sandbox) -> None:
    assert "javascript" in sandbox.languages  # node: scripts/install installs it
    ran = await sandbox.run("javascript", "function solve(t, c) { return c.x * 2; }",
                            entry="solve", args=[{}, {"x": 21}])
    assert ran.status is Status.OK and ran.result == 42
    bad = await sandbox.run("javascript", "function solve() { throw new Error('no'); }",
                            entry="solve")
    assert bad.status is Status.ERROR and bad.error_message == "no"


async def test_network_is_unreachable(sandbox: Sandbox) -> None:
    source = ("import socket\n"
              "socket.create_connection(('1.1.1.1', 53), timeout=2)\n")
    ran = await sandbox.run("python", source)
    assert ran.status is Status.ERROR and ran.error_type in {"OSError", "TimeoutError"}
    await _still_works(sandbox)


async def test_writes_outside_tmp_fail(sandbox: Sandbox) -> None:
    source = ("import os\n"
              "open('scratch.txt', 'w').write('ok')\n"
              "open('/usr/codeworld-escape', 'w').write('x')\n")
    ran = await sandbox.run("python", source)
    assert ran.status is Status.ERROR and ran.error_type in {"OSError", "PermissionError"}
    assert not Path("/usr/codeworld-escape").exists()  # noqa: ASYNC240
    await _still_works(sandbox)


async def test_fork_bomb_is_contained(single: Sandbox) -> None:
    source = ("import os\n"
              "while True:\n"
              "    try:\n"
              "        os.fork()\n"
              "    except OSError:\n"
              "        pass\n")
    ran = await single.run("python", source, limits=Limits(wall_time=1.5))
    assert ran.status in {Status.TIMEOUT, Status.KILLED}
    count = LIVE + "print(len(live()))"
    after = await single.run("python", count)
    assert after.status is Status.OK
    if single.isolation == BUBBLEWRAP:  # init, worker, zygote, run (own pid namespace)
        assert int(after.stdout) <= 4
    await _still_works(single)


async def test_memory_bomb_is_killed(sandbox: Sandbox) -> None:
    source = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))\n"
    ran = await sandbox.run("python", source, limits=Limits(memory=256 << 20))
    assert ran.status is Status.KILLED and ran.reason == "memory"
    await _still_works(sandbox)


async def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    ran = await sandbox.run("python", "import time\nwhile True:\n    time.sleep(0.01)\n",
                            limits=Limits(wall_time=0.5))
    assert ran.status is Status.TIMEOUT and ran.reason == "wall_time"
    assert ran.wall < 2
    await _still_works(sandbox)


async def test_background_process_does_not_outlive_its_run(single: Sandbox) -> None:
    source = (LIVE + "import time\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              "        time.sleep(30)\n"
              "    os._exit(0)\n"
              "time.sleep(0.2)\n"
              "print(' '.join(live()))\n")
    ran = await single.run("python", source)
    assert ran.status is Status.OK
    before = set(ran.stdout.split())
    check = LIVE + "print(os.getppid())\nprint(' '.join(live()))"
    after = await single.run("python", check)
    zygote, alive = after.stdout.split("\n", 1)
    # init, the worker, and the zygote the runs are forked from live on; nothing else.
    survivors = before & set(alive.split()) - {"1", "2", zygote}
    assert not survivors, (before, after.stdout)
    await _still_works(single)


async def test_server_environment_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEWORLD_TEST_SECRET", "hunter2-secret")
    async with Sandbox(SandboxSettings(workers=1)) as box:
        source = ("import os\n"
                  "seen = str(dict(os.environ))\n"
                  "for p in os.listdir('/proc'):\n"
                  "    try:\n"
                  "        seen += open(f'/proc/{p}/environ', 'rb').read().decode('latin1')\n"
                  "    except OSError:\n"
                  "        pass\n"
                  "print(seen)\n")
        ran = await box.run("python", source)
        assert ran.status is Status.OK and "hunter2-secret" not in ran.stdout
        home = await box.run("python", "import os\nprint(os.path.exists('/root/.bashrc'))")
        assert home.stdout.strip() == "False" or box.isolation != BUBBLEWRAP
        await _still_works(box)


async def test_rlimits_fallback_still_runs_and_says_so() -> None:
    async with Sandbox(SandboxSettings(workers=1, isolation="rlimits")) as box:
        assert box.isolation in {"rlimits", "rlimits+unshare"}
        await _still_works(box)
        ran = await box.run("python", "while True: pass", limits=Limits(wall_time=0.5))
        assert ran.status is Status.TIMEOUT


async def test_strict_mode_rejects_denied_constructs(sandbox: Sandbox) -> None:
    with pytest.raises(PolicyViolation):
        await sandbox.run("python", "import os\n", strict=True)
    with pytest.raises(PolicyViolation):
        await sandbox.run("python", "open('x', 'w')\n", strict=True)
    with pytest.raises(PolicyViolation):
        await sandbox.run("python", "eval('1')\n", strict=True)
    ran = await sandbox.run("python", "import math\nprint(math.pi)", strict=True)
    assert ran.status is Status.OK


async def test_bad_calls_are_typed_errors(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidSource):
        await sandbox.run("cobol", "DISPLAY 'HI'")
    with pytest.raises(InvalidSource):
        await sandbox.run("python", "x", entry="not an identifier")
    with pytest.raises(InvalidLimits):
        Limits(wall_time=0)
    with pytest.raises(InvalidLimits):
        Limits(memory=1)


async def test_concurrent_runs(sandbox: Sandbox) -> None:
    import asyncio

    runs = await asyncio.gather(*(sandbox.run("python", ECHO, entry="solve",
                                              args=[{}, {"x": i}]) for i in range(10)))
    assert [r.result for r in runs] == [2 * i for i in range(10)]


async def test_dead_worker_is_replaced(single: Sandbox) -> None:
    worker = single._slots[0]
    assert worker is not None
    await worker.kill()
    await _still_works(single)


#: This test file and the sandbox's own source: a sandboxed program sees neither.
_OWN_FILES = (os.path.realpath(__file__), os.path.realpath(inspect.getfile(Sandbox)))


async def test_the_root_is_an_allow_list_and_extra_ro_binds_expose_one_directory() -> None:
    """Only /usr, /etc, the interpreter's prefix and what the operator binds are visible:
    a directory anywhere else on the host (here under /var/tmp, where no deny-list looks)
    is absent, as are the service's own files; a bind under it exposes that one directory,
    read-only, and none of its siblings."""
    elsewhere = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        keep = elsewhere / "tools" / "chain"
        keep.mkdir(parents=True)
        (keep / "tool.txt").write_text("visible")
        (elsewhere / "secret.txt").write_text("hunter2")
        for path in (elsewhere, keep.parent, keep):
            path.chmod(0o755)
        settings = SandboxSettings(workers=1,
                                   extra_ro_binds=(str(keep), str(elsewhere / "absent")))
        async with Sandbox(settings) as box:
            assert box.isolation == BUBBLEWRAP
            probes = [*_OWN_FILES, "/var/lib/dpkg", "/home"]
            source = (f"import os\n"
                      f"print(open({str(keep / 'tool.txt')!r}).read())\n"
                      f"print(sorted(os.listdir({str(elsewhere)!r})))\n"
                      f"try:\n"
                      f"    open({str(keep / 'new.txt')!r}, 'w')\n"
                      f"except OSError as exc:\n"
                      f"    print('refused', exc.errno)\n"
                      f"print([os.path.exists(p) for p in {probes!r}])\n"
                      f"print(os.path.exists('/etc/passwd'), os.path.exists('/usr/bin'))\n")
            ran = await box.run("python", source)
            assert ran.status is Status.OK, ran
            assert ran.stdout.split("\n")[:5] == [
                "visible", "['tools']", f"refused {errno.EROFS}", str([False] * len(probes)),
                "True True"]
            await _still_works(box)
    finally:
        shutil.rmtree(elsewhere)


async def test_sandboxes_on_one_host_never_share_uids() -> None:
    """RLIMIT_NPROC and the sweep after each run act per uid, host-wide: two sandboxes
    with the same settings must claim different uid ranges."""

    assert os.geteuid() == 0, "the suite runs as root, as CI does: private uids need it"
    settings = SandboxSettings(workers=1, base_uid=64000)
    async with Sandbox(settings) as first, Sandbox(settings) as second:
        uids = [int((await box.run("python", "import os\nprint(os.getuid())")).stdout)
                for box in (first, second)]
        assert uids[0] != uids[1] and min(uids) >= 64000, uids
        await _still_works(first)
        locks = [box._uids.path if box._uids else None for box in (first, second)]
        assert all(path and locked_by_me(path) for path in locks), locks
    # Closed, each sandbox gave its range back (the kernel's view of the locks).
    assert not any(path and locked_by_me(path) for path in locks)


async def test_each_worker_runs_code_as_a_private_uid() -> None:
    """README: a private uid per sandbox worker. Two runs at once take both workers (a
    busy worker is never handed a second run), and each runs as its own unprivileged uid,
    neither root nor the host's."""

    assert os.geteuid() == 0, "the suite runs as root, as CI does: private uids need it"
    source = ("import os, time\n"
              "def solve(t, c):\n"
              "    time.sleep(0.5)\n"
              "    return [os.getuid(), os.getgid()]\n")
    async with Sandbox(SandboxSettings(workers=2, base_uid=64100)) as box:
        both = await asyncio.gather(*(box.run("python", source, entry="solve", args=[{}, {}])
                                      for _ in range(2)))
    ids = [tuple(ran.result) for ran in both]
    assert all(ran.status is Status.OK for ran in both), both
    assert ids[0] != ids[1] and all(uid == gid and uid >= 64100 for uid, gid in ids), ids


SCAN = ("import ctypes\nimport re\n"
        "def solve(task, context):\n"
        "    found = set()\n"
        "    with open('/proc/self/maps') as maps:\n"
        "        for line in maps:\n"
        "            fields = line.split()\n"
        "            # readable anonymous memory and the heap: where freed objects stay\n"
        "            if not fields[1].startswith('r') or fields[5:] not in ([], ['[heap]']):\n"
        "                continue\n"
        "            start, end = (int(x, 16) for x in fields[0].split('-'))\n"
        "            data = ctypes.string_at(start, end - start)\n"
        "            found.update(m.decode() for m in re.findall(rb'TENANT-[0-9a-f]{32}', data))\n"
        "    return sorted(found)\n")


async def test_a_run_cannot_read_earlier_runs_from_its_memory(single: Sandbox) -> None:
    """Runs were forked from the worker's server, whose heap held every earlier request
    and output, freed but not erased: a strategy reading its own memory found another
    caller's source, context and stdout."""
    import uuid

    secrets = {part: f"TENANT-{uuid.uuid4().hex}" for part in ("source", "context", "stdout")}
    source = (f"# {secrets['source']}\n"
              f"def solve(task, context):\n"
              f"    print({secrets['stdout']!r})\n"
              f"    return len(context['token'])\n")
    first = await single.run("python", source, entry="solve",
                             args=[{}, {"token": secrets["context"]}])
    assert first.status is Status.OK and secrets["stdout"] in first.stdout
    scan = await single.run("python", SCAN, entry="solve", args=[{}, {}],
                            limits=Limits(wall_time=20.0))
    assert scan.status is Status.OK, scan
    assert not set(scan.result) & set(secrets.values()), scan.result


async def test_a_runs_shared_memory_does_not_outlive_it(single: Sandbox) -> None:
    """The worker's IPC namespace outlives its runs: a System V segment kept its memory
    (beyond the run's RLIMIT_AS) and handed its bytes to the next run."""
    make = ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.shmat.restype = ctypes.c_void_p\n"
            "shm = libc.shmget(0, 1 << 20, 0o1666)\n"  # IPC_PRIVATE, IPC_CREAT | 0666
            "addr = libc.shmat(shm, None, 0)\n"
            "ctypes.memset(addr, 65, 1 << 20)\n"
            "libc.shmdt(ctypes.c_void_p(addr))\n"
            "print(shm)\n")
    made = await single.run("python", make)
    assert made.status is Status.OK and int(made.stdout) >= 0, made
    listed = await single.run("python", "print(open('/proc/sysvipc/shm').read())")
    assert listed.status is Status.OK
    assert len(listed.stdout.strip().splitlines()) == 1, listed.stdout  # the header only
    # A process the run left behind makes segments until it is killed: none survives.
    racer = ("import ctypes, os, time\n"
             "libc = ctypes.CDLL(None)\n"
             "if os.fork() == 0:\n"
             "    os.setsid()\n"
             "    while True:\n"
             "        libc.shmget(0, 4096, 0o1666)\n"
             "        time.sleep(0.0002)\n"
             "time.sleep(0.3)\n")
    raced = await single.run("python", racer)
    assert raced.status is Status.OK, raced
    listed = await single.run("python", "print(open('/proc/sysvipc/shm').read())")
    assert len(listed.stdout.strip().splitlines()) == 1, listed.stdout[:300]
    await _still_works(single)


_KEYS_AND_QUEUES = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
    "def solve(task, context):\n"
    "    found = {}\n"
    "    secret = b'TENANT-A-SECRET'\n"
    "    if context['write']:\n"
    "        q = rt.mq_open(b'/leak', os.O_CREAT | os.O_RDWR, 0o600, None)\n"
    "        found['mq'] = q if q < 0 else rt.mq_send(q, secret, len(secret), 0)\n"
    "        key = libc.syscall(248, b'user', b'leak', secret, len(secret), -4)\n"  # add_key
    "        found['key'] = key\n"
    "    else:\n"
    "        q = rt.mq_open(b'/leak', os.O_RDONLY | os.O_NONBLOCK, 0, None)\n"
    "        buf = ctypes.create_string_buffer(8192)\n"
    "        n = rt.mq_receive(q, buf, 8192, None) if q >= 0 else -1\n"
    "        found['mq'] = buf.raw[:n].decode() if n > 0 else None\n"
    "        key = libc.syscall(249, b'user', b'leak', None, 0)\n"  # request_key
    "        n = libc.syscall(250, 11, key, buf, 8192) if key >= 0 else -1\n"  # KEYCTL_READ
    "        found['key'] = buf.raw[:n].decode() if n > 0 else None\n"
    "    found['errno'] = ctypes.get_errno()\n"
    "    return found\n")


@pytest.mark.parametrize("hop", ["same worker", "next worker start"])
async def test_a_run_cannot_hand_data_to_a_later_run_by_kernel_keys_or_message_queues(
        hop: str) -> None:
    """A worker keeps one IPC namespace and one uid for all its runs: a POSIX message
    queue (`mq_open`) and the uid's kernel keyring (`add_key`: it outlives every process of
    the uid, even the server) carried one tenant's data into later tenants' runs, across
    CodeWorld and the agent's tools. Runs may not use either (a seccomp filter)."""
    async with Sandbox(SandboxSettings(workers=1, limits=Limits(wall_time=5.0))) as box:
        wrote = await box.run("python", _KEYS_AND_QUEUES, entry="solve",
                              args=[{}, {"write": True}])
        assert wrote.status is Status.OK, wrote
        assert wrote.result["mq"] == -1 and wrote.result["key"] == -1, wrote.result
        assert wrote.result["errno"] == errno.EPERM, wrote.result
        if hop == "same worker":
            read = await box.run("python", _KEYS_AND_QUEUES, entry="solve",
                                 args=[{}, {"write": False}])
            assert read.status is Status.OK, read
            assert read.result["mq"] is None and read.result["key"] is None, read.result
    if hop == "next worker start":  # the same uids again, in a new sandbox
        async with Sandbox(SandboxSettings(workers=1, limits=Limits(wall_time=5.0))) as box:
            read = await box.run("python", _KEYS_AND_QUEUES, entry="solve",
                                 args=[{}, {"write": False}])
            assert read.status is Status.OK, read
            assert read.result["mq"] is None and read.result["key"] is None, read.result


@pytest.mark.parametrize("argv", [
    ["unshare", "-Ur", "true"],  # a user namespace: every capability inside it
    ["unshare", "-Urn", "true"],
    ["unshare", "-Urpf", "true"],
])
async def test_a_run_cannot_make_namespaces_of_its_own(sandbox: Sandbox,
                                                       argv: list[str]) -> None:
    """Inside a new user namespace a run held every capability (`CapEff: 1ffffffffff`),
    and with them the kernel's whole surface for namespace owners (mounts, netfilter)."""
    source = ("import ctypes, subprocess\n"
              "def solve(task, context):\n"
              f"    done = subprocess.run({argv!r}, capture_output=True, text=True)\n"
              "    libc = ctypes.CDLL(None, use_errno=True)\n"
              "    made = libc.unshare(0x10000000)\n"  # CLONE_NEWUSER
              "    return [done.returncode, done.stderr, ctypes.get_errno() if made else 0]\n")
    ran = await sandbox.run("python", source, entry="solve", args=[{}, {}])
    assert ran.status is Status.OK, ran
    code, stderr, direct = ran.result
    assert code != 0 and "Operation not permitted" in stderr, ran.result
    assert direct == errno.EPERM, ran.result


async def test_threads_processes_and_compilers_still_work_under_the_filter(
        sandbox: Sandbox) -> None:
    """clone3 answers ENOSYS (its flags cannot be read by a filter), so the C library
    falls back to clone, whose namespace flags are refused: threads, fork, posix_spawn."""
    source = ("import threading, subprocess, os\n"
              "def solve(task, context):\n"
              "    out = []\n"
              "    t = threading.Thread(target=lambda: out.append('thread'))\n"
              "    t.start(); t.join()\n"
              "    out.append(subprocess.run(['echo', 'spawned'], capture_output=True,\n"
              "                              text=True).stdout.strip())\n"
              "    pid = os.fork()\n"
              "    if pid == 0:\n"
              "        os._exit(7)\n"
              "    out.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
              "    return out\n")
    ran = await sandbox.run("python", source, entry="solve", args=[{}, {}])
    assert (ran.status, ran.result) == (Status.OK, ["thread", "spawned", 7]), ran


async def test_a_tree_too_deep_for_rmtree_does_not_fill_the_workers_tmp(
        single: Sandbox) -> None:
    """`shutil.rmtree` recurses: 1,500 nested directories stopped it half-way and left a
    full /tmp to every later run of the worker (compiles failed with ENOSPC)."""
    deep = ("import os\n"
            "for _ in range(1500):\n"
            "    os.mkdir('d')\n"
            "    os.chdir('d')\n"
            "for i in range(6):\n"
            "    with open(f'fill{i}', 'wb') as f:\n"
            "        f.write(b'x' * (8 << 20))\n")
    free = "import os\ns = os.statvfs('.')\nprint(s.f_bavail * s.f_frsize)\n"
    before = await single.run("python", free)
    ran = await single.run("python", deep, limits=Limits(wall_time=20.0))
    assert ran.status is Status.OK, ran
    after = await single.run("python", free)
    assert after.status is Status.OK
    assert int(after.stdout) > int(before.stdout) - (8 << 20), (before.stdout, after.stdout)
    await _still_works(single)


async def test_a_result_nested_too_deep_is_an_error_and_the_worker_lives(
        single: Sandbox) -> None:
    """A result nested ~990 deep was written by the worker and could not be read back by
    the host: the worker was killed and the run lost."""
    nest = "def solve(task, context):\n    v = 1\n    for _ in range(context['n']):\n" \
           "        v = [v]\n    return v\n"
    fine = await single.run("python", nest, entry="solve", args=[{}, {"n": 150}])
    assert fine.status is Status.OK
    deep = await single.run("python", nest, entry="solve", args=[{}, {"n": 900}])
    assert (deep.status, deep.reason) == (Status.ERROR, "result_depth"), deep
    await _still_works(single)


async def test_output_that_is_not_utf8_stays_within_its_byte_limit(sandbox: Sandbox) -> None:
    """Each byte that is not UTF-8 reads as U+FFFD (three bytes): 16 MiB of 0xff on
    stdout and stderr made a 96 MiB event, and the run's whole stream failed at gRPC's
    message limit. The text kept is at most `output` bytes of UTF-8, and says it was cut."""
    source = ("import os\n"
              "os.write(1, b'\\xff' * (256 << 10))\n"
              "os.write(2, b'\\xfe' * (256 << 10))\n")
    ran = await sandbox.run("python", source, limits=Limits(output=256 << 10))
    assert ran.status is Status.OK, ran
    assert ran.truncated
    for text in (ran.stdout, ran.stderr):
        assert 0 < len(text.encode()) <= 256 << 10 and set(text) == {"\ufffd"}
