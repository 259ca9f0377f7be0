"""The CodeWorld sandbox: run untrusted code in eight languages, cheaply and contained.

API::

    async with Sandbox(SandboxSettings(workers=2)) as sandbox:
        sandbox.isolation                      # "bubblewrap" | "rlimits+unshare" | "rlimits"
        ex = await sandbox.run("python", "def solve(t, c):\\n    return c['x'] * 2",
                               entry="solve", args=[{}, {"x": 21}],
                               limits=Limits(wall_time=2.0))
        ex.status, ex.result, ex.stdout, ex.wall, ex.cpu, ex.peak_memory
        ex = await sandbox.run("rust", 'fn main() { println!("42"); }')   # a program
        sandbox.toolchains()                   # every language: available, version, reason

How it contains code
--------------------
* **bubblewrap** (preferred): each worker is a long-lived ``python -I -S`` fork server in
  ``bwrap --unshare-net --unshare-pid --unshare-ipc --unshare-uts --die-with-parent
  --new-session --clearenv --cap-drop ALL`` over a minimal read-only root
  (`scillm.server.minroot`): ``/usr`` and its merged-/usr links, ``visible_paths``
  (``/etc``), the interpreter's and node's prefixes and ``extra_ro_binds`` (e.g. a
  compiler's toolchain directory), each at its own path, a private tmpfs ``/tmp``, a fresh
  ``/proc`` and ``/dev``; nothing else of the host (homes, ``/opt``, ``/var``, ``/srv``,
  wherever the service's own files live). Writes succeed only under ``/tmp``.
* Per execution the worker forks a child (milliseconds, no interpreter or bwrap start)
  that sets a new session, drops to the worker's private uid, and applies RLIMIT_CPU,
  RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_CORE = 0.
* **Processes.** RLIMIT_NPROC counts per uid and root ignores it, so when the host is root
  each worker's runs execute as their own unprivileged uid (``base + slot``, from a range
  of uids this sandbox claims for itself on the host, see ``scillm.server.uids``): the limit
  then counts only that run's processes and threads, and the run cannot signal the
  worker. After every run a helper holding that uid calls ``kill(-1, SIGKILL)``, which
  kills every process of the uid atomically with respect to fork: fork bombs and
  daemonised children (even after ``setsid``) do not outlive their run. The pid namespace
  bounds what is visible; no cgroups are needed. When the host is *not* root there is no
  spare uid: RLIMIT_NPROC is not set, the run's process group is killed, and the pid
  namespace (bubblewrap) reaps the rest when the worker is replaced.
* The wall-clock limit is enforced by the worker (pidfd + select) and kills the whole
  process group; the host adds ``grace`` and replaces a worker that overruns it.
* **The run as a whole** (``_usage.py``): while a run runs, the worker samples it every
  10 ms and once more when its first process exits: the resident anonymous and shared
  memory of all its processes (its uid's, else its session's and descendants'), and the
  bytes and inodes its directory added to the worker's private tmpfs. Past
  ``Limits.total_memory`` (twice ``memory`` by default: RLIMIT_AS bounds each process,
  not their sum), ``Limits.disk`` or ``Limits.files`` the whole run is killed and
  reported KILLED with that limit as its reason; ``peak_memory`` is the whole run's.
  ``SandboxSettings.tmp_size`` bounds a worker's tmpfs (hence any run's bytes) hard.
  memfds, whose pages no process's resident set shows, are refused (seccomp). cgroups
  would count exactly, but are not used: a container's ``/sys/fs/cgroup`` is often
  read-only, and placing a run in one needs the cgroup file system inside the sandbox.
* **Fallback** without bubblewrap: the same worker under rlimits, with ``unshare --net``
  when permitted (``"rlimits+unshare"``) or without (``"rlimits"``); the file system is
  then only protected by the unprivileged uid (root only), and the environment is still
  cleared. ``isolation`` reports which level is in force.
* **Strict mode** (opt-in, Python): an AST deny-list (``check_policy``) rejects imports of
  os/subprocess/socket/ctypes and kin, eval/exec/__import__, and open() for writing.

Python code runs with the standard library only (``-I -S``). JavaScript runs on node
(when installed) with a V8 heap of ``Limits.memory``.

Compiled languages
------------------
TypeScript (tsc on node), C (gcc), C++ (g++), Java (javac), Rust (rustc) and Go (go build)
are compiled **inside the same sandbox**, as the run's private uid, under
``SandboxSettings.compile_limits`` (60 s, 4 GiB, 256 processes by default), once per
distinct (toolchain, source): the artifact goes to a content-addressed cache on the host
(``_compile.py``), read-only inside the sandbox, and compile errors are remembered. A
compiled C/C++/Java/Rust/Go strategy then runs as a program under the run's limits (the
JVM and Go's runtime, like node, get ``Limits.memory`` as heap and 1 GiB more address
space); TypeScript runs as JavaScript. Toolchains are found when the sandbox starts
(``_toolchains.py``); a language whose toolchain is missing is listed with the reason by
``Sandbox.toolchains()`` and refused by ``run``.
"""

from ._execution import Execution, JsonValue, Language, Status, describe_failure
from ._launch import BUBBLEWRAP, RLIMITS, RLIMITS_UNSHARE
from ._limits import Limits
from ._parse import UnreadableSource, check_readable, parse_python
from ._policy import check_policy
from ._sandbox import Sandbox
from ._settings import IsolationMode, SandboxSettings
from ._text import utf8_safe
from ._toolchains import COMPILED, Toolchain

__all__ = [
    "BUBBLEWRAP",
    "COMPILED",
    "RLIMITS",
    "RLIMITS_UNSHARE",
    "Execution",
    "IsolationMode",
    "JsonValue",
    "Language",
    "Limits",
    "Sandbox",
    "SandboxSettings",
    "Status",
    "Toolchain",
    "UnreadableSource",
    "check_policy",
    "check_readable",
    "describe_failure",
    "parse_python",
    "utf8_safe",
]
