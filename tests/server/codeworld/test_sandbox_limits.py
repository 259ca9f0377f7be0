"""A run is measured and bounded as a whole: the memory of every process it forks, the
bytes and files it writes in its directory. Hostile runs are stopped with a status that
says which limit, and the worker (and the mesh around it) serves on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from meshutil import RunningMesh

from scillm.clients import ScillmClient
from scillm.clients.errors import RPCError
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.codeworld.errors import InvalidLimits
from scillm.server.codeworld.sandbox import (
    BUBBLEWRAP,
    Limits,
    Sandbox,
    SandboxSettings,
    Status,
)
from scillm.server.codeworld.sandbox._usage import RunMeter

_MIB = 1 << 20

#: ``hold(n, mib)``: fork ``n`` children that each touch ``mib`` MiB and keep it, then
#: return once every child holds its memory (the children outlive the call).
HOLD = ("import os, time\n"
        "def hold(n, mib):\n"
        "    r, w = os.pipe()\n"
        "    for _ in range(n):\n"
        "        if os.fork() == 0:\n"
        "            block = bytearray(mib << 20)\n"
        "            for i in range(0, len(block), 4096):\n"
        "                block[i] = 1\n"
        "            os.write(w, b'.')\n"
        "            time.sleep(120)\n"
        "            os._exit(0)\n"
        "    got = 0\n"
        "    while got < n:\n"
        "        got += len(os.read(r, n))\n"
        "    return got\n")
#: Processes visible in the worker's pid namespace that are not the run's.
COUNT = ("import os\n"
         "def count():\n"
         "    n = 0\n"
         "    for p in os.listdir('/proc'):\n"
         "        try:\n"
         "            if p.isdigit() and open(f'/proc/{p}/stat').read().split()[2] != 'Z':\n"
         "                n += 1\n"
         "        except OSError:\n"
         "            pass\n"
         "    return n\n")
#: Free blocks and inodes of the run directory's file system.
FREE = "import os\ns = os.statvfs('.')\nprint(s.f_bfree, s.f_ffree)\n"
ECHO = "def solve(task, context):\n    return context['x'] * 2\n"


async def _still_works(box: Sandbox) -> None:
    ran = await box.run("python", ECHO, entry="solve", args=[{}, {"x": 21}])
    assert ran.status is Status.OK and ran.result == 42


async def _nothing_left(box: Sandbox) -> None:
    """Only init, the worker and its zygote live on in the (single) worker."""
    after = await box.run("python", COUNT, entry="count")
    assert after.status is Status.OK, after
    if box.isolation == BUBBLEWRAP:
        assert after.result <= 4, after


@pytest.fixture
async def single() -> AsyncIterator[Sandbox]:
    """One worker, so consecutive runs share its sandbox (pid namespace, /tmp)."""
    async with Sandbox(SandboxSettings(workers=1, limits=Limits(wall_time=3.0))) as box:
        yield box


async def test_peak_memory_counts_every_process_of_the_run(single: Sandbox) -> None:
    """peak_memory was ru_maxrss of the run's first process: a run whose four forked
    children held 4 GiB reported 15 MB."""
    ran = await single.run("python", HOLD, entry="hold", args=[4, 64],
                           limits=Limits(wall_time=20.0, memory=256 * _MIB, processes=16))
    assert (ran.status, ran.result) == (Status.OK, 4), ran
    assert ran.peak_memory >= 4 * 64 * _MIB, ran.peak_memory
    await _nothing_left(single)
    await _still_works(single)


async def test_a_run_whose_children_hold_more_than_total_memory_is_killed(
        single: Sandbox) -> None:
    """RLIMIT_AS bounds each process, not the run: four children held 4 GiB. The run's
    processes together may hold `total_memory`; past it the whole run is killed."""
    limits = Limits(wall_time=20.0, memory=256 * _MIB, total_memory=160 * _MIB,
                    processes=16)
    ran = await single.run("python", HOLD, entry="hold", args=[4, 64], limits=limits)
    assert (ran.status, ran.reason, ran.error_type) == (
        Status.KILLED, "total_memory", "ResourceLimit"), ran
    assert "total_memory" in ran.error_message
    assert ran.peak_memory > 160 * _MIB
    await _nothing_left(single)
    await _still_works(single)
    # Under the limit the same run is fine.
    roomy = Limits(wall_time=20.0, memory=256 * _MIB, total_memory=512 * _MIB, processes=16)
    ok = await single.run("python", HOLD, entry="hold", args=[2, 64], limits=roomy)
    assert (ok.status, ok.result) == (Status.OK, 2), ok


async def test_total_memory_defaults_to_twice_memory_and_is_validated() -> None:
    assert Limits(memory=300 * _MIB).effective_total_memory == 600 * _MIB
    assert Limits(memory=300 * _MIB, total_memory=100 * _MIB).effective_total_memory == \
        100 * _MIB
    for bad in ({"total_memory": 1}, {"disk": -1}, {"files": 0}, {"total_memory": True}):
        with pytest.raises(InvalidLimits, match=next(iter(bad))):
            Limits(**bad)  # type: ignore[arg-type]


async def test_memory_held_by_a_memfd_cannot_hide_from_the_limits(sandbox: Sandbox) -> None:
    """Pages written to a memfd belong to no process's resident set and to no file
    system: they escaped every limit. A run cannot make one."""
    ran = await sandbox.run("python", "import os\nos.memfd_create('hidden')\n")
    assert (ran.status, ran.error_type) == (Status.ERROR, "PermissionError"), ran
    await _still_works(sandbox)


async def test_a_file_bomb_is_stopped_at_files_and_its_inodes_are_freed(
        single: Sandbox) -> None:
    """A run made 739k files (and 736 MiB of kernel slab) in 10 s: nothing bounded the
    inodes of the worker's tmpfs."""
    if single.isolation != BUBBLEWRAP:
        pytest.skip("disk and files are bounded on the worker's private tmpfs (bubblewrap)")
    before = await single.run("python", FREE)
    bomb = ("import os\n"
            "i = 0\n"
            "while True:\n"
            "    os.mkdir(f'd{i}') if i % 2 else open(f'f{i}', 'w').close()\n"
            "    i += 1\n")
    ran = await single.run("python", bomb, limits=Limits(wall_time=20.0, files=2000))
    assert (ran.status, ran.reason, ran.error_type) == (
        Status.KILLED, "files", "ResourceLimit"), ran
    assert "2000" in ran.error_message
    after = await single.run("python", FREE)
    assert after.stdout == before.stdout  # every block and inode given back
    await _nothing_left(single)
    await _still_works(single)


async def test_a_run_that_writes_more_than_disk_is_killed(single: Sandbox) -> None:
    if single.isolation != BUBBLEWRAP:
        pytest.skip("disk and files are bounded on the worker's private tmpfs (bubblewrap)")
    # Files of 4 MiB each (under file_size), 24 MiB in all, kept while the run sleeps.
    writer = ("import time\n"
              "for i in range(6):\n"
              "    with open(f'part{i}', 'wb') as f:\n"
              "        f.write(b'x' * (4 << 20))\n"
              "time.sleep(120)\n")
    ran = await single.run("python", writer, limits=Limits(wall_time=20.0, disk=8 * _MIB))
    assert (ran.status, ran.reason) == (Status.KILLED, "disk"), ran
    # Under the limit the same writer only runs out of time.
    fits = await single.run("python", writer, limits=Limits(wall_time=1.0, disk=64 * _MIB))
    assert (fits.status, fits.reason) == (Status.TIMEOUT, "wall_time"), fits
    await _still_works(single)


async def test_a_full_tmp_is_reported_as_disk_even_when_the_run_carries_on() -> None:
    """The worker's tmpfs (`tmp_size`) is the hard bound: writes past it fail (ENOSPC).
    A run that swallows the error and carries on is still stopped, and says why."""
    settings = SandboxSettings(workers=1, tmp_size=16 * _MIB, limits=Limits(wall_time=3.0))
    async with Sandbox(settings) as box:
        if box.isolation != BUBBLEWRAP:
            pytest.skip("disk and files are bounded on the worker's private tmpfs")
        filler = ("import time\n"
                  "for i in range(64):\n"
                  "    try:\n"
                  "        with open(f'part{i}', 'wb') as f:\n"
                  "            f.write(b'x' * (1 << 20))\n"
                  "    except OSError:\n"
                  "        pass\n"
                  "time.sleep(120)\n")
        ran = await box.run("python", filler, limits=Limits(wall_time=20.0, disk=_MIB << 10))
        assert (ran.status, ran.reason) == (Status.KILLED, "disk"), ran
        await _still_works(box)


async def test_the_mesh_stops_hostile_strategies_and_serves_on(mesh: RunningMesh) -> None:
    """Over gRPC: a strategy whose children hold more than the run's memory (twice
    `memory_bytes`) and a file bomb are each killed, naming the limit; the honest
    strategy beside them is ranked, and the next request is served."""
    hog = HOLD.replace("def hold", "def _hold") + \
        "def main():\n    _hold(4, 96)\n    print(3)\n"
    bomb = ("import os\n"
            "def main():\n"
            "    i = 0\n"
            "    while True:\n"
            "        open(f'f{i}', 'w').close()\n"
            "        i += 1\n")
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    req.items.add(task_id="t").context.update({"input": 1, "expected": 3})
    req.limits.memory_bytes = 160 * _MIB
    req.limits.timeout.FromSeconds(30)
    req.strategies.add(name="hog", source=hog)
    req.strategies.add(name="bomb", source=bomb)
    req.strategies.add(name="three", source="def main():\n    print(3)\n")
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(req)]
        runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
        assert runs["hog"].status == cw.RUN_STATUS_KILLED, runs["hog"]
        assert runs["hog"].error.startswith("total_memory"), runs["hog"].error
        assert runs["hog"].timings.peak_memory_bytes > 320 * _MIB
        assert runs["bomb"].status == cw.RUN_STATUS_KILLED, runs["bomb"]
        assert runs["bomb"].error.startswith("files"), runs["bomb"].error
        assert runs["three"].status == cw.RUN_STATUS_OK and runs["three"].tests_passed
        assert events[-1].summary.rankings[0].entries[0].strategy == "three"
        again = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
        again.items.add(task_id="t").context.update({"input": 1, "expected": 3})
        again.strategies.add(name="three", source="def main():\n    print(3)\n")
        after = [e async for e in client.codeworld.run(again)]
        assert next(e.run for e in after if e.HasField("run")).status == cw.RUN_STATUS_OK


async def test_a_caller_sets_the_whole_runs_limits_over_grpc(mesh: RunningMesh) -> None:
    """`Limits.total_memory_bytes`, `max_disk_bytes` and `max_files` reach the sandbox: the
    hog's children fit in a total the caller raised past twice `memory_bytes`, a bomb
    stops at the caller's file count, and a writer at the caller's bytes; a value outside
    the sandbox's range is INVALID_ARGUMENT naming the limits."""
    hog = HOLD.replace("def hold", "def _hold") + \
        "def main():\n    _hold(4, 96)\n    print(3)\n"
    bomb = ("def main():\n"
            "    for i in range(1000):\n"
            "        open(f'f{i}', 'w').close()\n"
            "    print(3)\n")
    writer = ("def main():\n"
              "    with open('big', 'wb') as f:\n"
              "        f.write(b'x' * (24 << 20))\n"
              "    print(3)\n")
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    req.items.add(task_id="t").context.update({"input": 1, "expected": 3})
    req.limits.memory_bytes = 160 * _MIB
    req.limits.total_memory_bytes = 1024 * _MIB
    req.limits.max_files = 100
    req.limits.max_disk_bytes = 8 * _MIB
    req.limits.timeout.FromSeconds(30)
    for name, source in (("hog", hog), ("bomb", bomb), ("writer", writer)):
        req.strategies.add(name=name, source=source)
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(req)]
        runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
        assert runs["hog"].status == cw.RUN_STATUS_OK, runs["hog"]
        assert runs["hog"].timings.peak_memory_bytes > 320 * _MIB
        assert runs["bomb"].status == cw.RUN_STATUS_KILLED, runs["bomb"]
        assert runs["bomb"].error.startswith("files"), runs["bomb"].error
        assert runs["writer"].status == cw.RUN_STATUS_KILLED, runs["writer"]
        assert runs["writer"].error.startswith("disk"), runs["writer"].error
        bad = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
        bad.CopyFrom(req)
        bad.limits.max_files = 3
        with pytest.raises(RPCError) as info:
            [e async for e in client.codeworld.run(bad)]
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "files" in info.value.message, info.value


#: A process tree in its own session: a child in the session and one that left it
#: (``setsid``), each holding 64 MiB; prints "ready" and the children's pids once both
#: hold it.
TREE = ("import os, sys, time\n"
        "r, w = os.pipe()\n"
        "pids = []\n"
        "for leave in (False, True):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        if leave:\n"
        "            os.setsid()\n"
        "        block = bytearray(64 << 20)\n"
        "        for i in range(0, len(block), 4096):\n"
        "            block[i] = 1\n"
        "        os.write(w, b'.')\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "os.read(r, 1)\n"
        "os.read(r, 1)\n"
        "print('ready', *pids, flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def trees() -> Iterator[Callable[[str], int]]:
    """Start a `TREE`-like source; its first process's pid. Each process it started is
    killed by pid at the end."""
    procs: list[subprocess.Popen[str]] = []
    children: list[int] = []

    def start(source: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, *pids = proc.stdout.readline().split()
        children.extend(int(pid) for pid in pids)
        assert ready == "ready"
        return proc.pid

    yield start
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        proc.kill()
        proc.communicate()


def test_without_a_private_uid_the_run_is_its_session_and_descendants(
        trees: Callable[[str], int]) -> None:
    """A host that is not root gives runs no uid of their own: the meter then counts the
    run's session and every descendant of its first process (one that left the session
    too), and nothing else of the host (here, another tree holding more)."""
    run = trees(TREE)
    trees(TREE.replace("64 << 20", "256 << 20"))
    meter = RunMeter({"total_memory": 512 * _MIB}, uid=None, tmp=None)
    meter.begin(run)
    assert meter.sample() is None
    assert 2 * 64 * _MIB <= meter.peak < 2 * 256 * _MIB, meter.peak
    tight = RunMeter({"total_memory": 100 * _MIB}, uid=None, tmp=None)
    tight.begin(run)
    assert tight.sample() == "total_memory"
    assert tight.outcome("total_memory")["reason"] == "total_memory"


#: Shared memory a parent maps, touches, hands to a sleeping child and unmaps, four times:
#: the child's page table holds none of it, the parent's no longer does.
SHARED_ANON = ("import mmap, os, time\n"
               "def main():\n"
               "    for _ in range(4):\n"
               "        m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_SHARED)\n"
               "        for off in range(0, 64 << 20, 4096):\n"
               "            m[off] = 1\n"
               "        if os.fork() == 0:\n"
               "            time.sleep(5)\n"
               "            os._exit(0)\n"
               "        m.close()\n"
               "    time.sleep(1)\n")
SYSV = ("import ctypes, os, time\n"
        "def main():\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.shmat.restype = ctypes.c_void_p\n"
        "    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\n"
        "    libc.shmdt.argtypes = [ctypes.c_void_p]\n"
        "    for _ in range(4):\n"
        "        sid = libc.shmget(0, 64 << 20, 0o1600)\n"
        "        addr = libc.shmat(sid, None, 0)\n"
        "        ctypes.memset(addr, 1, 64 << 20)\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5)\n"
        "            os._exit(0)\n"
        "        libc.shmdt(ctypes.c_void_p(addr))\n"
        "    time.sleep(1)\n")


async def test_system_v_memory_handed_to_children_counts(single: Sandbox) -> None:
    """A review's 800 MiB held this way against a total of 256 MiB ran OK: the pages were
    in no process's resident set, and a segment still attached was not counted. 256 MiB
    here against 160 MiB is stopped."""
    ran = await single.run("python", SYSV, entry="main", args=[], limits=Limits(
        wall_time=20.0, memory=256 * _MIB, total_memory=160 * _MIB, processes=16))
    assert (ran.status, ran.reason) == (Status.KILLED, "total_memory"), ran
    await _still_works(single)


async def test_shared_anonymous_memory_cannot_hide_from_the_limits(single: Sandbox) -> None:
    """The same with `mmap(MAP_SHARED | MAP_ANONYMOUS)` held 800 MiB: the worker may not
    read another uid's memory maps to count it, so a run cannot make such a mapping (as
    it cannot make a memfd); a private one, and a shared one of a file, still work."""
    ran = await single.run("python", SHARED_ANON, entry="main", args=[], limits=Limits(
        wall_time=20.0, memory=256 * _MIB, total_memory=160 * _MIB, processes=16))
    assert (ran.status, ran.error_type) == (Status.ERROR, "PermissionError"), ran
    fine = ("import mmap\n"
            "def main():\n"
            "    private = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE)\n"
            "    private[0] = 1\n"
            "    with open('f', 'wb+') as f:\n"
            "        f.truncate(1 << 20)\n"
            "        shared = mmap.mmap(f.fileno(), 1 << 20)\n"
            "        shared[0] = 2\n"
            "    return private[0] + shared[0]\n")
    ran = await single.run("python", fine, entry="main", args=[])
    assert (ran.status, ran.result) == (Status.OK, 3), ran
    await _still_works(single)
