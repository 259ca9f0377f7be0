"""The fork server that lives inside the sandbox (stdlib only; never imported by the host).

The host starts it once per worker as ``python -I -S -c <this file's text> <config JSON>``
inside bubblewrap (or the fallback) and then speaks JSON lines on stdin/stdout: one
request line in, one response line out. The runs are not forked from the server itself,
whose memory holds every earlier request and output (a run could read them there, freed
but not erased: another caller's source, context and stdout), but from a zygote the server
forks before its first request, which never holds any of them: the server writes a run's
request into its run directory, hands the zygote the directory and the run's pipes, and the
zygote forks a child that reads the request and deletes it, then

1. starts a new session (its own process group) and takes fds 0-3 only
   (stdin file, stdout pipe, stderr pipe, result pipe); everything else is closed;
2. drops to the worker's private uid (when the server is root), so that RLIMIT_NPROC
   counts only this run's processes and the run cannot signal the server;
3. installs a seccomp filter (no kernel keys, POSIX message queues, new namespaces,
   io_uring, perf, bpf: a uid's keyring and the worker's IPC namespace outlive a run) and
   applies rlimits (CPU, address space, processes, file size, open files, core = 0);
4. runs the code (Python in-process, so a run costs a fork; JavaScript by exec'ing node)
   and writes one JSON outcome on fd 3; or exec's a program (``argv``: a compiled
   strategy, or a compiler), whose exit status is the outcome.

A compile is a program run whose ``outputs`` (files or directories of the run directory)
are sent back, base64-encoded, when it exits 0; the host keeps them in its compile cache.

The server enforces the wall-clock limit, caps output, measures the run as a whole while
it runs (``_usage.py``, handed over as text: the memory of all its processes, the bytes
and files of its directory) and kills it past ``total_memory``, ``disk`` or ``files``.
After every run it kills every process left with the run's uid (``kill(-1, SIGKILL)``
from a helper holding that uid, atomic with respect to fork), so nothing outlives its
run, and removes the System V IPC objects (shared memory, queues, semaphores) the run
made: the worker's IPC namespace outlives a run, and a segment kept the memory it pinned
and handed data to the next run.
A run directory that cannot be removed (a tree too deep for `shutil.rmtree`) is removed with
`rm -rf`; when even that fails the server exits after answering, so the host starts a fresh
worker instead of leaving a full /tmp to every later run.
"""

from __future__ import annotations

import base64

# Warm imports: the modules user code most often needs are loaded once, before forking.
import bisect  # noqa: F401
import builtins
import collections  # noqa: F401
import ctypes
import fcntl
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import io
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import select
import shutil
import signal
import socket
import string  # noqa: F401
import sys
import time
import traceback
import types
import typing  # noqa: F401
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._usage import RunMeter

_RESULT_FD = 3
_CHUNK = 65536
_NO_RESULT = b'{"ok": false, "reason": "unserialisable", "error": {"type": "MemoryError"}}'
_MAX_ARTIFACT = 128 << 20
#: The run's request, written by the server, read and deleted by the run's child.
_JOB = ".job"
#: Nesting a result may have: the host's JSON reader must be able to read it back.
_MAX_DEPTH = 200

_JS_HARNESS = r"""
const fs = require('fs');
const req = JSON.parse(fs.readFileSync('.request.json', 'utf8'));
function done(o) { let s; try { s = JSON.stringify(o); } catch (e) {
  s = JSON.stringify({ok: false, reason: 'unserialisable',
                      error: {type: 'TypeError', message: String(e)}}); }
  fs.writeSync(3, s === undefined ? '{"ok": true, "result": null}' : s); }
(async () => {
  try {
    const module = {exports: {}};
    const name = req.entry;
    const tail = name ? `\n;return [typeof ${name} === 'function' ? ${name}` +
      ` : module.exports[${JSON.stringify(name)}],` +
      ` typeof check === 'function' ? check : null];` : '\n;return [null, null];';
    const body = req.source + '\n;' + (req.tests || '') + tail;
    const [fn, check] = new Function('require', 'module', 'exports', body)(
      require, module, module.exports);
    if (req.entry && typeof fn !== 'function') {
      done({ok: false, reason: 'entry_missing',
            error: {type: 'EntryMissing', message: `no function ${req.entry}`}});
      return;
    }
    if (req.tests) {
      if (typeof check !== 'function') {
        done({ok: false, reason: 'entry_missing',
              error: {type: 'EntryMissing', message: 'tests define no check()'}});
        return;
      }
      await check(fn);
      done({ok: true, result: true});
    } else if (req.entry) {
      let v = await fn(...req.args);
      done({ok: true, result: v === undefined ? null : v});
    } else {
      done({ok: true, result: null});
    }
  } catch (e) {
    process.stderr.write(String(e && e.stack || e) + '\n');
    done({ok: false, reason: 'exception', error: {type: (e && e.name) || 'Error',
          message: String(e && e.message || e).slice(0, 2000)}});
  }
})();
"""


class _EntryMissing(Exception):
    pass


def _send(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _high(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 100)


def _set_limits(limits: dict[str, Any], language: str, drop_uid: bool) -> None:
    cpu = int(limits["cpu_time"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(limits.get("address_space") or limits["memory"])
    if language == "javascript" and not limits.get("address_space"):
        memory += 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if drop_uid:
        nproc = int(limits["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    size = int(limits["file_size"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    files = int(limits["open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


#: System calls a run may not make, by machine: kernel keys (a uid's keyring outlives
#: every process of the uid, even the server, and carried one tenant's data to the next),
#: POSIX message queues (the worker's IPC namespace outlives its runs), new namespaces (a
#: user namespace hands its maker every capability inside it), memfds (their pages are in
#: no process's resident set and on no file system: 64 descriptors of 16 MiB each held
#: 1 GiB past every memory limit), io_uring, perf, bpf and userfaultfd (kernel surface no
#: strategy needs). Numbers from the kernel's syscall tables.
_DENIED = {
    "x86_64": {"add_key": 248, "request_key": 249, "keyctl": 250, "mq_open": 240,
               "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243,
               "mq_notify": 244, "mq_getsetattr": 245, "unshare": 272, "setns": 308,
               "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
               "memfd_create": 319, "memfd_secret": 447},
    "aarch64": {"add_key": 217, "request_key": 218, "keyctl": 219, "mq_open": 180,
                "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183,
                "mq_notify": 184, "mq_getsetattr": 185, "unshare": 97, "setns": 268,
                "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
                "memfd_create": 279, "memfd_secret": 447},
}
#: Per machine: its AUDIT_ARCH, clone's and clone3's numbers.
_ARCH = {"x86_64": (0xC000003E, 56, 435), "aarch64": (0xC00000B7, 220, 435)}
#: Per machine: mmap's number. Shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS) is
#: refused as memfds are: a forked child maps none of the pages it inherits, so once the
#: parent unmapped its view they were in no process's memory (four children held 800 MiB
#: past a total of 256), and the worker may not read another uid's memory maps. Shared
#: memory goes through a file (counted as the run's disk) or System V (counted).
_MMAP = {"x86_64": 9, "aarch64": 222}
#: MAP_SHARED (also in MAP_SHARED_VALIDATE) and MAP_ANONYMOUS.
_SHARED_ANONYMOUS = 0x01 | 0x20
#: clone's flags that make namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
#: NEWNET).
_NAMESPACES = 0x7E020000


def _filter(machine: str) -> bytes:
    """A classic-BPF seccomp program: the `_DENIED` calls answer EPERM, so do clone with
    namespace flags and mmap of shared anonymous memory (`_MMAP`); clone3 ENOSYS (a
    filter cannot read its flags, and the C library falls back to clone), another ABI
    (x32, i386) ENOSYS; the rest is allowed."""
    arch, clone, clone3 = _ARCH[machine]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    code: list[tuple[int, Any, Any, int]] = [  # (op, jump if true, if false, k)
        (0x20, 0, 0, 4),  # ld arch
        (0x15, 1, 0, arch),  # jeq arch
        (0x06, 0, 0, enosys),
        (0x20, 0, 0, 0),  # ld nr
        (0x35, "eperm", 0, 0x40000000),  # jge: x32's calls
        *((0x15, "eperm", 0, nr) for nr in _DENIED[machine].values()),
        (0x15, 0, 3, _MMAP[machine]),  # jeq mmap, else on to clone3
        (0x20, 0, 0, 40),  # ld args[3] (its low half): mmap's flags
        (0x54, 0, 0, _SHARED_ANONYMOUS),  # and
        (0x15, "eperm", "allow", _SHARED_ANONYMOUS),
        (0x15, "enosys", 0, clone3),
        (0x15, 0, "allow", clone),
        (0x20, 0, 0, 16),  # ld args[0] (its low half): clone's flags
        (0x45, "eperm", "allow", _NAMESPACES),  # jset
    ]
    labels = {"allow": len(code), "eperm": len(code) + 1, "enosys": len(code) + 2}
    code += [(0x06, 0, 0, allow), (0x06, 0, 0, eperm), (0x06, 0, 0, enosys)]
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += op.to_bytes(2, "little") + bytes((jt, jf)) + k.to_bytes(4, "little")
    return bytes(out)


def _confine() -> None:
    """Install `_filter` on this process and all it will start (no new privileges
    either: a set-uid program gains nothing). A machine without a table (neither x86_64
    nor aarch64) runs unfiltered."""
    machine = os.uname().machine
    if machine not in _ARCH:
        return
    program = _filter(machine)

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prog = _Prog(len(program) // 8, program)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or \
            libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "seccomp filter not installed")


def _child(run_dir: str, fds: list[int], cfg: dict[str, Any]) -> None:
    """Runs in the zygote's forked child; never returns."""
    job = os.path.join(run_dir, _JOB)
    with open(job, "rb") as f:
        req: dict[str, Any] = json.loads(f.read())
    os.unlink(job)
    os.setsid()
    stdin_fd = os.open(os.path.join(run_dir, ".stdin"), os.O_RDONLY)
    high = [_high(fd) for fd in (stdin_fd, *fds)]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    os.closerange(4, 1 << 16)
    uid = cfg.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    _confine()
    os.chdir(run_dir)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": run_dir, "TMPDIR": run_dir,
           "LANG": "C.UTF-8"}
    os.environ.clear()
    os.environ.update(env)
    language = str(req["language"])
    limits: dict[str, Any] = req["limits"]
    argv = req.get("argv")
    if argv:
        for key, value in (req.get("env") or {}).items():
            env[str(key)] = str(value).replace("{dir}", run_dir)
        _set_limits(limits, language, uid is not None)
        os.execve(str(argv[0]), [str(a) for a in argv], env)
    if language == "javascript":
        with open(".request.json", "w", encoding="utf-8") as f:
            json.dump({k: req.get(k) for k in ("source", "entry", "args", "tests")}, f)
        _set_limits(limits, language, uid is not None)
        heap = max(16, int(limits["memory"]) >> 20)
        node = str(cfg["node"])
        os.execve(node, [node, f"--max-old-space-size={heap}", "-e", _JS_HARNESS], env)
    _set_limits(limits, language, uid is not None)
    _run_python(req)


def _run_python(req: dict[str, Any]) -> None:
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    entry = req.get("entry")
    tests = req.get("tests")
    outcome: dict[str, Any]
    try:
        ns: dict[str, Any] = {"__name__": "__main__" if entry is None else "__candidate__",
                              "__builtins__": builtins}
        exec(compile(str(req["source"]), "<strategy>", "exec"), ns)
        value: Any = None
        if entry is not None:
            fn = ns.get(entry)
            if not callable(fn):
                raise _EntryMissing(f"no function {entry}()")
            if tests:
                exec(compile(str(tests), "<tests>", "exec"), ns)
                check = ns.get("check")
                if not callable(check):
                    raise _EntryMissing("tests define no check(candidate)")
                check(fn)
                value = True
            else:
                value = fn(*req.get("args", []))
        outcome = {"ok": True, "result": value}
    except SystemExit as exc:
        code = exc.code
        if entry is None and (code is None or code == 0):
            outcome = {"ok": True, "result": None}
        else:
            outcome = {"ok": False, "reason": f"exit {code}",
                       "error": {"type": "SystemExit", "message": str(code)}}
    except MemoryError:
        outcome = {"ok": False, "reason": "memory",
                   "error": {"type": "MemoryError", "message": "memory limit reached"}}
    except _EntryMissing as exc:
        outcome = {"ok": False, "reason": "entry_missing",
                   "error": {"type": "EntryMissing", "message": str(exc)}}
    except BaseException as exc:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        outcome = {"ok": False, "reason": "exception",
                   "error": {"type": type(exc).__name__, "message": str(exc)[:2000]}}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        data = json.dumps(outcome, allow_nan=False).encode()
    except MemoryError:
        data = _NO_RESULT
    except (TypeError, ValueError) as exc:
        data = json.dumps({"ok": False, "reason": "unserialisable",
                           "error": {"type": type(exc).__name__,
                                     "message": f"result is not JSON: {exc}"}}).encode()
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(_RESULT_FD, view):]
    except OSError:
        pass
    os._exit(0)


def _sweep(uid: int | None, pgid: int | None) -> None:
    """Kill whatever the run left behind: its process group, and every process of its uid."""
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    if uid is None:
        return
    for _ in range(500):  # SIGKILL is delivered asynchronously: wait until all are dead
        _as_uid(uid, lambda: os.kill(-1, signal.SIGKILL))
        if not _alive(uid):
            break
        time.sleep(0.001)
    # Nothing of the run's is left to make more: remove what it made, as its uid (the
    # creator of an object may remove it).
    found = _ipc_ids()
    if found:
        _as_uid(uid, lambda: _drop_ipc(found))


def _as_uid(uid: int, action: Any) -> None:
    """Run ``action()`` in a child of this process that has taken ``uid``."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            action()
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


def _ipc_ids() -> dict[str, list[int]]:
    """The System V IPC objects of this namespace, by kind (``/proc/sysvipc``)."""
    found: dict[str, list[int]] = {}
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}", "rb") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        ids = [int(row.split()[1]) for row in rows if len(row.split()) > 1]
        if ids:
            found[kind] = ids
    return found


def _drop_ipc(found: dict[str, list[int]]) -> None:
    """Remove the objects of ``found`` this process may remove (IPC_RMID is 0)."""
    if not found:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for ident in found.get("shm", ()):
        libc.shmctl(ident, 0, None)
    for ident in found.get("msg", ()):
        libc.msgctl(ident, 0, None)
    for ident in found.get("sem", ()):
        libc.semctl(ident, 0, 0)


def _remove(run_dir: str) -> bool:
    """Remove a run's directory; whether it is gone. `shutil.rmtree` recurses, so a tree
    deeper than the recursion limit stopped it half-way (RecursionError): `rm -rf` then."""
    try:
        shutil.rmtree(run_dir)
    except (OSError, RecursionError):
        pass
    if os.path.lexists(run_dir):
        try:
            os.waitpid(os.posix_spawn("/bin/rm", ["rm", "-rf", "--", run_dir], {}), 0)
        except OSError:
            pass
    return not os.path.lexists(run_dir)


class _ZygoteGone(Exception):
    pass


class _Zygote:
    """The process runs are forked from, forked before the first request (see above)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self._sock.close()
            try:
                _zygote(theirs, cfg)
            finally:
                os._exit(0)
        theirs.close()

    def spawn(self, run_dir: str, fds: list[int]) -> tuple[int, int]:
        """Fork the run of ``run_dir`` with ``fds`` (stdout, stderr, result): pid, pidfd."""
        try:
            socket.send_fds(self._sock, [run_dir.encode()], fds)
            msg, got, _, _ = socket.recv_fds(self._sock, 64, 1)
        except OSError as exc:
            raise _ZygoteGone(str(exc)) from exc
        if not msg or len(got) != 1:
            raise _ZygoteGone("the zygote is gone")
        return int(msg), got[0]

    def waited(self) -> tuple[int, float, int]:
        """The spawned run's wait status, CPU seconds and peak memory in bytes."""
        try:
            msg = self._sock.recv(256)
        except OSError as exc:
            raise _ZygoteGone(str(exc)) from exc
        if not msg:
            raise _ZygoteGone("the zygote is gone")
        status, cpu, peak = json.loads(msg)
        return int(status), float(cpu), int(peak)


def _zygote(sock: socket.socket, cfg: dict[str, Any]) -> None:
    """The zygote's loop: a run directory and its pipes in, the run's child forked."""
    # The server's stdin and stdout are the host's pipes: held here too, a server that
    # died would not look dead to the host (no end of file) until the zygote went.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 4096, 3)
        if not msg:
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            try:
                _child(msg.decode(), fds, cfg)
            finally:
                os._exit(112)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)  # before the wait: the pid cannot be reused under it
        socket.send_fds(sock, [str(pid).encode()], [pidfd])
        os.close(pidfd)
        _, status, usage = os.wait4(pid, 0)
        sock.send(json.dumps([status, usage.ru_utime + usage.ru_stime,
                              usage.ru_maxrss * 1024]).encode())


def _alive(uid: int) -> bool:
    """Whether a process of ``uid`` is still running (zombies do not count)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            return True
    return False


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _collect(pidfd: int, pipes: dict[int, bytearray], cap: dict[int, int],
             deadline: float, meter: RunMeter) -> tuple[str | None, bool]:
    """Read the pipes until the child (``pidfd``, closed here) exits, the deadline passes
    or ``meter`` finds the run past a limit; measured once more when the child exits,
    while what it forked still holds what it holds.

    Returns (the limit that stopped the run, ``"wall_time"`` or the meter's, or ``None``;
    truncated).
    """
    open_fds = set(pipes)
    truncated = False
    exited = False
    try:
        while True:
            now = time.monotonic()
            if not exited:
                if now > deadline:
                    return "wall_time", truncated
                if now >= meter.next_at and (over := meter.sample()):
                    return over, truncated
            wait = 0.0 if exited else max(0.0, min(deadline, meter.next_at) - now)
            ready, _, _ = select.select([pidfd, *open_fds], [], [], wait)
            if pidfd in ready and not exited:
                exited = True
                if over := meter.sample():
                    return over, truncated
            got = False
            for fd in ready:
                if fd == pidfd:
                    continue
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                got = True
                room = cap[fd] - len(pipes[fd])
                if room > 0:
                    pipes[fd] += chunk[:room]
                if len(chunk) > max(room, 0):
                    truncated = True
            if exited and (not got or not open_fds):
                return None, truncated
    finally:
        os.close(pidfd)


#: The directory of the run in progress, under the worker's own tmp (one run at a time).
#: Its name is the same for every run: `run-<n>` told a run how many runs of other
#: callers its worker had made, and code reading its cwd sees the same path each time.
_RUN_DIR = "run"


def _run_dir(cfg: dict[str, Any]) -> str:
    return os.path.join(str(cfg["tmp"]), _RUN_DIR)


def _execute(req: dict[str, Any], cfg: dict[str, Any], zygote: _Zygote,
             usage: types.ModuleType) -> dict[str, Any]:
    limits: dict[str, Any] = req["limits"]
    uid: int | None = cfg.get("uid")
    run_dir = _run_dir(cfg)
    os.mkdir(run_dir, 0o700)
    with open(os.path.join(run_dir, ".stdin"), "w", encoding="utf-8") as f:
        f.write(str(req.get("stdin") or ""))
    for name, text in (req.get("files") or {}).items():
        with open(os.path.join(run_dir, os.path.basename(str(name))), "w",
                  encoding="utf-8") as f:
            f.write(str(text))
    job = os.open(os.path.join(run_dir, _JOB), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(job, "wb") as f:
        f.write(json.dumps(req).encode())
    if uid is not None:
        os.chown(run_dir, uid, uid)
    meter: RunMeter = usage.RunMeter(limits, uid=uid, skip=frozenset({zygote.pid}),
                                     tmp=str(cfg["tmp"]) if cfg.get("private_tmp") else None)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    start = time.monotonic()
    pid, pidfd = zygote.spawn(run_dir, [out_w, err_w, res_w])
    meter.begin(pid)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    pipes = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    output = int(limits["output"])
    cap = {out_r: output, err_r: output, res_r: int(limits["result_size"]) + 1}
    stopped, truncated = _collect(pidfd, pipes, cap, start + float(limits["wall_time"]),
                                  meter)
    _sweep(uid, pid)
    status, cpu, peak = zygote.waited()
    wall = time.monotonic() - start
    for fd in pipes:
        os.close(fd)
    if stopped is not None and stopped != "wall_time":
        outcome = meter.outcome(stopped)
    else:
        outcome = _classify(stopped == "wall_time", status, bytes(pipes[res_r]), limits,
                            program=bool(req.get("argv")))
    if req.get("outputs") and outcome["status"] == "ok":
        try:
            outcome["artifact"] = _artifact(run_dir, [str(p) for p in req["outputs"]])
        except (OSError, ValueError) as exc:
            outcome = {"status": "error", "reason": "artifact",
                       "error": {"type": type(exc).__name__, "message": str(exc)}}
    removed = _remove(run_dir)
    _reap()
    (stdout, cut_out), (stderr, cut_err) = _text(pipes[out_r], output), _text(pipes[err_r], output)
    resp: dict[str, Any] = {
        "id": req.get("id"),
        "stdout": stdout,
        "stderr": stderr,
        "truncated": truncated or cut_out or cut_err,
        "wall": wall,
        "cpu": cpu,
        # The first process's own peak (the kernel's, exact), or the whole run's sampled.
        "peak_memory": max(peak, meter.peak),
        "exit_code": os.waitstatus_to_exitcode(status),
    }
    resp.update(outcome)
    if not removed:
        resp["_retire"] = True
    return resp


def _text(raw: bytearray, cap: int) -> tuple[str, bool]:
    """``raw`` as text of at most ``cap`` bytes of UTF-8, and whether it was cut. Each byte
    that is not UTF-8 reads as U+FFFD, three bytes: 16 MiB of 0xff on stdout and stderr
    made a 96 MiB event, past gRPC's message limit, and the whole run's stream failed."""
    text = raw.decode("utf-8", "replace")
    if len(text) * 3 <= cap or len(encoded := text.encode()) <= cap:
        return text, False
    return encoded[:cap].decode("utf-8", "ignore"), True


def _artifact(run_dir: str, outputs: list[str]) -> dict[str, list[Any]]:
    """The files of ``outputs`` (files or directories under ``run_dir``), base64-encoded."""
    found: dict[str, list[Any]] = {}
    total = 0
    for output in outputs:
        path = os.path.join(run_dir, output)
        if os.path.isdir(path) and not os.path.islink(path):
            names = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        elif os.path.isfile(path) and not os.path.islink(path):
            names = [path]
        else:
            raise ValueError(f"the build made no {output}")
        for name in names:
            if os.path.islink(name):
                continue
            with open(name, "rb") as f:
                data = f.read(_MAX_ARTIFACT + 1 - total)
            total += len(data)
            if total > _MAX_ARTIFACT:
                raise ValueError(f"the artifact exceeds {_MAX_ARTIFACT} bytes")
            found[os.path.relpath(name, run_dir)] = [os.stat(name).st_mode & 0o777,
                                                     base64.b64encode(data).decode()]
    return found


def _classify(timed_out: bool, status: int, raw: bytes, limits: dict[str, Any], *,
              program: bool = False) -> dict[str, Any]:
    if timed_out:
        return {"status": "timeout", "reason": "wall_time"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "reason": "cpu_time"}
        if sig == signal.SIGXFSZ:
            return {"status": "killed", "reason": "file_size"}
        return {"status": "killed", "reason": f"signal {signal.Signals(sig).name}"}
    if program:
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return {"status": "ok"}
        return {"status": "error", "reason": f"exit {code}",
                "error": {"type": "ExitStatus", "message": f"exit status {code}"}}
    if len(raw) > int(limits["result_size"]):
        return {"status": "error", "reason": "result_size",
                "error": {"type": "ResultTooLarge", "message": "result exceeds result_size"}}
    try:
        outcome = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        outcome = None
    if isinstance(outcome, dict) and outcome.get("ok") is True and \
            _deeper(outcome.get("result"), _MAX_DEPTH):
        return {"status": "error", "reason": "result_depth",
                "error": {"type": "ResultTooDeep",
                          "message": f"result nested deeper than {_MAX_DEPTH} levels"}}
    if not isinstance(outcome, dict):
        code = os.waitstatus_to_exitcode(status)
        reason = "memory" if code == 134 else f"exit {code}"
        return {"status": "error" if reason != "memory" else "killed", "reason": reason,
                "error": {"type": "NoResult", "message": f"no result reported ({reason})"}}
    if outcome.get("ok") is True:
        return {"status": "ok", "result": outcome.get("result")}
    reason = str(outcome.get("reason") or "exception")
    error = outcome.get("error") if isinstance(outcome.get("error"), dict) else {}
    return {"status": "killed" if reason == "memory" else "error", "reason": reason,
            "error": error}


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests lists and objects deeper than ``limit``."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [v for x in level if isinstance(x, (list, dict))
                 for v in (x.values() if isinstance(x, dict) else x)]
        if not level:
            return False
    return True


def _module(name: str, source: str) -> types.ModuleType:
    """The module ``name`` made from ``source`` (the sandbox sees none of our files); not
    importable by a run."""
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    usage = _module("_usage", sys.argv[2])
    _sweep(cfg.get("uid"), None)  # clear leftovers of a predecessor
    zygote = _Zygote(cfg)  # before any request is read
    _send({"ready": True, "pid": os.getpid(), "uid": cfg.get("uid")})
    for line in sys.stdin.buffer:
        req: dict[str, Any] = {}
        retire = False
        try:
            req = json.loads(line)
            resp = _execute(req, cfg, zygote, usage)
            retire = bool(resp.pop("_retire", False))
        except Exception as exc:
            # A run that failed half-way may have left its directory, which the next
            # run's is: removed, or the worker is replaced.
            retire = isinstance(exc, _ZygoteGone) or not _remove(_run_dir(cfg))
            resp = {"id": req.get("id"), "status": "error", "reason": "worker",
                    "error": {"type": type(exc).__name__, "message": str(exc)}}
        _send(resp)
        if retire:  # the host starts a fresh worker for the next request
            sys.exit(3)


if __name__ == "__main__":
    main()
