"""The host's toolchains: which languages can run, and how each is built and started.

Python runs in the worker itself and JavaScript on node. TypeScript is checked and
compiled by tsc (on node) to JavaScript. C, C++, Rust, Go and Java are compiled by the
host's compiler *inside the sandbox* into an artifact (a binary, or Java classes) that
is then executed as a program. A toolchain is looked for once, when the sandbox starts;
a language whose toolchain is missing is reported with the reason and never offered.

Where installers put compilers under a home (rustup's ``~/.cargo``), the toolchain's
real directory is bound read-only into the sandbox (``Toolchain.root``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._execution import Language

__all__ = ["COMPILED", "Build", "Toolchain", "find_toolchain", "java_class"]

#: Languages compiled before they run (TypeScript compiles to JavaScript).
COMPILED: frozenset[Language] = frozenset({
    Language.TYPESCRIPT, Language.C, Language.CPP, Language.JAVA, Language.RUST, Language.GO})

_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_JAVA_CLASS = re.compile(r"public\s+(?:final\s+|abstract\s+)*class\s+([A-Za-z_$][\w$]*)")
Which = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Build:
    """How one source becomes an artifact, inside the run directory of a worker.

    ``argv`` runs with the run directory as working directory; ``{dir}`` in ``env``
    values stands for that directory. ``outputs`` (files or directories, relative) are
    the artifact.
    """

    file: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Toolchain:
    """A language's toolchain on this host, or why there is none.

    Attributes:
        language: the language.
        version: the compiler's or runtime's version ("" when not found).
        reason: why the language is unavailable; "" when it is available.
        compiler: the compiler (or tsc's script) by real path; None for Python/JavaScript.
        runtime: the program that runs artifacts (java, node); None for native binaries.
        root: a directory the sandbox must bind read-only for the toolchain to work
            (rust's sysroot, GOROOT, JAVA_HOME, the typescript package).
    """

    language: Language
    version: str = ""
    reason: str = ""
    compiler: str | None = None
    runtime: str | None = None
    root: str | None = None

    @property
    def available(self) -> bool:
        """Whether strategies in this language can run."""
        return not self.reason

    @property
    def found(self) -> bool:
        """Alias of ``available``."""
        return self.available

    @property
    def compiled(self) -> bool:
        """Whether a source is compiled before it runs."""
        return self.language in COMPILED

    @property
    def identity(self) -> str:
        """What distinguishes this toolchain's output in the compile cache."""
        return f"{self.compiler}|{self.runtime}|{self.version}"

    def build(self, source: str) -> Build:
        """How ``source`` is compiled (compiled languages only)."""
        assert self.compiler is not None
        cc = self.compiler
        if self.language is Language.C:
            return Build("main.c", (cc, "-O2", "-std=c17", "-pipe", "-o", "main", "main.c",
                                    "-lm"), ("main",))
        if self.language is Language.CPP:
            return Build("main.cpp", (cc, "-O2", "-std=c++17", "-pipe", "-o", "main",
                                      "main.cpp"), ("main",))
        if self.language is Language.RUST:
            return Build("main.rs", (cc, "--edition=2021", "-O", "-C", "codegen-units=1",
                                     "-C", "strip=symbols", "-o", "main", "main.rs"),
                         ("main",), {"PATH": _SYSTEM_PATH})
        if self.language is Language.GO:
            # No -trimpath: it would rebuild the standard library instead of using GOROOT's.
            return Build("main.go", (cc, "build", "-p", "1", "-ldflags=-s -w",
                                     "-o", "main", "main.go"), ("main",),
                         {"GOCACHE": "{dir}/.gocache", "GOPATH": "{dir}/.gopath",
                          "GOTOOLCHAIN": "local", "GOTELEMETRY": "off", "CGO_ENABLED": "0",
                          "GOFLAGS": "", "GO111MODULE": "off", "GOMAXPROCS": "2"})
        if self.language is Language.JAVA:
            name = java_class(source)
            return Build(f"{name}.java", (cc, "-J-Xmx512m", "-J-XX:+UseSerialGC",
                                          "-J-XX:TieredStopAtLevel=1", "-J-Xshare:auto",
                                          "-encoding", "UTF-8", "-d", "classes",
                                          f"{name}.java"), ("classes",))
        assert self.language is Language.TYPESCRIPT and self.runtime is not None
        return Build("main.ts", (self.runtime, "--max-old-space-size=1024", cc,
                                 "--target", "es2020", "--module", "commonjs",
                                 "--lib", "es2020,dom", "--noEmitOnError", "--pretty", "false",
                                 "--outDir", "out", "main.ts"), ("out/main.js",))

    def command(self, artifact: str, source: str, memory: int) -> list[str]:
        """The argv running a compiled artifact (a directory) with ``memory`` bytes."""
        if self.language is Language.JAVA:
            assert self.runtime is not None
            return [self.runtime, f"-Xmx{max(16, memory >> 20)}m", "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xshare:auto",
                    "-XX:CompressedClassSpaceSize=64m", "-XX:ReservedCodeCacheSize=32m",
                    "-cp", os.path.join(artifact, "classes"), java_class(source)]
        return [os.path.join(artifact, "main")]

    def environment(self, memory: int) -> dict[str, str]:
        """Extra environment of a compiled program given ``memory`` bytes."""
        if self.language is Language.GO:  # the runtime's soft limit; address space is apart
            return {"GOMEMLIMIT": f"{memory}B", "GOMAXPROCS": "2"}
        return {}


def java_class(source: str) -> str:
    """The public class a Java source declares (``Main`` when it declares none)."""
    found = _JAVA_CLASS.search(source)
    return found.group(1) if found else "Main"


def _run(argv: list[str], timeout: float = 20.0) -> tuple[int, str, str]:
    # HOME (and rustup's own variables) let installer proxies find their toolchains.
    env = {"PATH": _SYSTEM_PATH, "LANG": "C.UTF-8"}
    env.update((k, v) for k, v in os.environ.items()
               if k in ("HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "CARGO_HOME"))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=timeout,
                              check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, "", str(exc)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def _first_line(text: str) -> str:
    return (text.splitlines() or [""])[0]


def _locate(name: str, which: Which, fallbacks: tuple[str, ...] = (), *,
            real: bool = True) -> str | None:
    """``name`` on PATH or in ``fallbacks``; by real path unless it is a proxy (rustup's
    ``rustc`` is a link to ``rustup``, which looks at the name it was called by)."""
    found = which(name) or next(
        (str(p) for d in fallbacks if (p := Path(d).expanduser() / name).is_file()
         and os.access(p, os.X_OK)), None)
    return (os.path.realpath(found) if real else found) if found else None


def _gcc(language: Language, name: str, which: Which) -> Toolchain:
    compiler = _locate(name, which)
    if compiler is None:
        return Toolchain(language, reason=f"{name} not found on PATH")
    code, out, err = _run([compiler, "-dumpfullversion"])
    if code != 0:
        return Toolchain(language, reason=f"{name} -dumpfullversion failed: {err[:200]}")
    return Toolchain(language, f"{name} {out}", compiler=compiler)


def _java(which: Which) -> Toolchain:
    javac, java = _locate("javac", which), _locate("java", which)
    if javac is None or java is None:
        return Toolchain(Language.JAVA, reason="javac/java not found on PATH "
                                               "(a JDK: default-jdk-headless)")
    home = Path(javac).parent.parent
    release = home / "release"
    version = ""
    if release.is_file():
        match = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(errors="replace"),
                          re.MULTILINE)
        version = match.group(1) if match else ""
    if not version:
        code, out, err = _run([javac, "-version"])
        version = (out or err).removeprefix("javac ").strip() if code == 0 else ""
    if not version:
        return Toolchain(Language.JAVA, reason=f"{javac} -version failed")
    return Toolchain(Language.JAVA, f"java {version}", compiler=javac, runtime=java,
                     root=str(home))


def _rooted(language: Language, name: str, which: Which, fallbacks: tuple[str, ...],
            query: tuple[str, ...], version_args: tuple[str, ...], hint: str) -> Toolchain:
    """A toolchain whose driver names its real directory (``query``), whose compiler is
    ``<root>/bin/<name>``: rustup's sysroot, Go's GOROOT."""
    driver = _locate(name, which, fallbacks, real=False)
    if driver is None:
        return Toolchain(language, reason=f"{name} not found on PATH or in "
                                          f"{', '.join(fallbacks)} ({hint})")
    code, found, err = _run([driver, *query])
    if code != 0 or not found or not os.access(os.path.join(found, "bin", name), os.X_OK):
        return Toolchain(language, reason=f"{name} {' '.join(query)} gave no usable "
                                          f"toolchain: {_first_line(err) or found}")
    root = os.path.realpath(found)
    compiler = os.path.join(root, "bin", name)
    code, version, err = _run([compiler, *version_args])
    if code != 0:
        return Toolchain(language, reason=f"{name} {' '.join(version_args)} failed: "
                                          f"{_first_line(err)}")
    return Toolchain(language, version.removeprefix("go version "), compiler=compiler,
                     root=root)


def _rust(which: Which) -> Toolchain:
    if shutil.which("cc", path=_SYSTEM_PATH) is None:
        return Toolchain(Language.RUST, reason=f"cc (rustc's linker) not found in {_SYSTEM_PATH}")
    return _rooted(Language.RUST, "rustc", which, ("~/.cargo/bin",), ("--print", "sysroot"),
                   ("--version",), "Debian: rustc")


def _go(which: Which) -> Toolchain:
    return _rooted(Language.GO, "go", which, ("/usr/local/go/bin", "~/go/bin",
                                              "~/.local/go/bin"), ("env", "GOROOT"),
                   ("version",), "Debian: golang-go")


def _typescript(node: str | None, package: str | None) -> Toolchain:
    if node is None:
        return Toolchain(Language.TYPESCRIPT, reason="node not found on PATH")
    candidates = [package] if package else [
        str(Path(sys.prefix).parent / ".tools" / "node_modules" / "typescript"),
        str(Path(__file__).resolve().parents[3] / ".tools" / "node_modules" / "typescript"),
        "/usr/local/lib/node_modules/typescript", "/usr/lib/node_modules/typescript"]
    for directory in candidates:
        tsc = os.path.join(directory, "lib", "tsc.js")
        meta = os.path.join(directory, "package.json")
        if os.path.isfile(tsc) and os.path.isfile(meta):
            try:
                version = str(json.loads(Path(meta).read_text())["version"])
            except (OSError, ValueError, KeyError):
                continue
            root = os.path.realpath(directory)
            return Toolchain(Language.TYPESCRIPT, f"typescript {version}",
                             compiler=os.path.join(root, "lib", "tsc.js"), runtime=node,
                             root=root)
    return Toolchain(Language.TYPESCRIPT, reason="typescript not found (scripts/install puts "
                                                 f"it in .tools/; looked in {candidates[0]})")


def find_toolchain(language: Language, *, python: str, node: str | None,
                   typescript: str | None = None, which: Which = shutil.which) -> Toolchain:
    """Look for ``language``'s toolchain; runs each compiler once for its version."""
    if language is Language.PYTHON:
        return Toolchain(language, f"python {sys.version.split()[0]}", runtime=python)
    if language is Language.JAVASCRIPT:
        if node is None:
            return Toolchain(language, reason="node not found on PATH")
        code, version, err = _run([node, "--version"])
        return (Toolchain(language, f"node {version}", runtime=node) if code == 0 else
                Toolchain(language, reason=f"node --version failed: {_first_line(err)}"))
    if language is Language.TYPESCRIPT:
        return _typescript(node, typescript)
    if language in (Language.C, Language.CPP):
        return _gcc(language, "gcc" if language is Language.C else "g++", which)
    if language is Language.JAVA:
        return _java(which)
    if language is Language.RUST:
        return _rust(which)
    return _go(which)
