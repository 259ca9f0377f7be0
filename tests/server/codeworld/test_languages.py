"""Strategies in every language: one task ranked across them, compiled once per source,
contained like Python (network, files, processes), and reported when unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from meshutil import RunningMesh

from scillm.clients import ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.codeworld.sandbox import BUBBLEWRAP, Limits, Sandbox, SandboxSettings, Status

# The README's task, {"input": [1, 2, 3], "expected": 6}, in every language: the function
# languages get the context as an argument, the programs read it as JSON on stdin.
SUM = {
    "python": "def solve(task, context):\n    return sum(context['input'])\n",
    "javascript": "function solve(task, context) {\n"
                  "  return context.input.reduce((a, b) => a + b, 0);\n}\n",
    "typescript": "function solve(task: unknown, context: {input: number[]}): number {\n"
                  "  return context.input.reduce((a, b) => a + b, 0);\n}\n",
    "c": """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = 0;
    char *p = strchr(strstr(buf, "\\"input\\""), '[') + 1;
    long total = 0;
    while (*p && *p != ']') {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) { p++; continue; }
        total += v;
        p = end;
    }
    printf("%ld\\n", total);
    return 0;
}
""",
    "cpp": """\
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
int main() {
    std::string s((std::istreambuf_iterator<char>(std::cin)), {});
    auto open = s.find('[', s.find("\\"input\\""));
    std::string list = s.substr(open + 1, s.find(']', open) - open - 1);
    for (char &c : list) if (c == ',') c = ' ';
    std::istringstream in(list);
    long total = 0, v;
    while (in >> v) total += v;
    std::cout << total << std::endl;
}
""",
    "java": """\
import java.util.regex.*;
public class Sum {
    public static void main(String[] args) throws Exception {
        String s = new String(System.in.readAllBytes());
        Matcher m = Pattern.compile("\\"input\\"\\\\s*:\\\\s*\\\\[([^\\\\]]*)\\\\]").matcher(s);
        long total = 0;
        if (m.find())
            for (String x : m.group(1).split(","))
                if (!x.isBlank()) total += Long.parseLong(x.trim());
        System.out.println(total);
    }
}
""",
    "rust": """\
use std::io::Read;
fn main() {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).unwrap();
    let open = s.find("\\"input\\"").unwrap();
    let open = open + s[open..].find('[').unwrap() + 1;
    let close = open + s[open..].find(']').unwrap();
    let total: i64 = s[open..close].split(',').filter_map(|x| x.trim().parse::<i64>().ok()).sum();
    println!("{}", total);
}
""",
    "go": """\
package main

import (
\t"encoding/json"
\t"fmt"
\t"os"
)

func main() {
\tvar ctx struct{ Input []int `json:"input"` }
\tif err := json.NewDecoder(os.Stdin).Decode(&ctx); err != nil {
\t\tpanic(err)
\t}
\ttotal := 0
\tfor _, x := range ctx.Input {
\t\ttotal += x
\t}
\tfmt.Println(total)
}
""",
}
ENUM = {"python": cw.LANGUAGE_PYTHON, "javascript": cw.LANGUAGE_JAVASCRIPT,
        "typescript": cw.LANGUAGE_TYPESCRIPT, "c": cw.LANGUAGE_C, "cpp": cw.LANGUAGE_CPP,
        "java": cw.LANGUAGE_JAVA, "rust": cw.LANGUAGE_RUST, "go": cw.LANGUAGE_GO}

# Escape attempts per compiled language: each prints what happened.
NETWORK = {
    "c": """\
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
int main(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
    inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
    puts(s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0 ? "connected" : "blocked");
    return 0;
}
""",
    "rust": """\
use std::net::TcpStream;
use std::time::Duration;
fn main() {
    let to = "1.1.1.1:53".parse().unwrap();
    let ok = TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok();
    println!("{}", if ok { "connected" } else { "blocked" });
}
""",
    "go": """\
package main

import (
\t"fmt"
\t"net"
\t"time"
)

func main() {
\tif _, err := net.DialTimeout("tcp", "1.1.1.1:53", 2*time.Second); err != nil {
\t\tfmt.Println("blocked")
\t} else {
\t\tfmt.Println("connected")
\t}
}
""",
    "java": """\
import java.net.*;
public class Main {
    public static void main(String[] a) {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress("1.1.1.1", 53), 2000);
            System.out.println("connected");
        } catch (Exception e) {
            System.out.println("blocked");
        }
    }
}
""",
    "typescript": """\
declare const require: (name: string) => any;
const socket = require("net").connect({host: "1.1.1.1", port: 53, timeout: 2000});
socket.on("connect", () => { console.log("connected"); socket.destroy(); });
socket.on("error", () => console.log("blocked"));
socket.on("timeout", () => { console.log("blocked"); socket.destroy(); });
""",
}
NETWORK["cpp"] = NETWORK["c"]
FILES = {
    "c": """\
#include <stdio.h>
int main(void) {
    FILE *here = fopen("scratch.txt", "w");
    FILE *out = fopen("/usr/codeworld-escape", "w");
    printf("%s %s\\n", here ? "scratch" : "no-scratch", out ? "wrote" : "refused");
    return 0;
}
""",
    "rust": """\
fn main() {
    let here = std::fs::write("scratch.txt", "ok").is_ok();
    let out = std::fs::write("/usr/codeworld-escape", "x").is_ok();
    println!("{} {}", if here { "scratch" } else { "no-scratch" },
             if out { "wrote" } else { "refused" });
}
""",
    "go": """\
package main

import (
\t"fmt"
\t"os"
)

func main() {
\there, out := "scratch", "refused"
\tif os.WriteFile("scratch.txt", []byte("ok"), 0o600) != nil {
\t\there = "no-scratch"
\t}
\tif os.WriteFile("/usr/codeworld-escape", []byte("x"), 0o600) == nil {
\t\tout = "wrote"
\t}
\tfmt.Println(here, out)
}
""",
    "java": """\
import java.nio.file.*;
public class Main {
    static String attempt(String path, String ok, String no) {
        try { Files.writeString(Path.of(path), "x"); return ok; } catch (Exception e) { return no; }
    }
    public static void main(String[] a) {
        System.out.println(attempt("scratch.txt", "scratch", "no-scratch") + " "
                           + attempt("/usr/codeworld-escape", "wrote", "refused"));
    }
}
""",
    "typescript": """\
declare const require: (name: string) => any;
const fs = require("fs");
function attempt(path: string, ok: string, no: string): string {
    try { fs.writeFileSync(path, "x"); return ok; } catch (e) { return no; }
}
console.log(attempt("scratch.txt", "scratch", "no-scratch") + " "
            + attempt("/usr/codeworld-escape", "wrote", "refused"));
""",
}
FILES["cpp"] = FILES["c"]
FORK_BOMB = {
    "c": "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n",
    "cpp": "#include <unistd.h>\nint main() { for (;;) fork(); }\n",
    "rust": "fn main() { loop { let _ = std::process::Command::new(\"/bin/sleep\")"
            ".arg(\"30\").spawn(); } }\n",
    "go": "package main\n\nimport \"os/exec\"\n\nfunc main() {\n\tfor {\n"
          "\t\t_ = exec.Command(\"/bin/sleep\", \"30\").Start()\n\t}\n}\n",
    "java": "public class Main { public static void main(String[] a) { while (true) {\n"
            "  try { new ProcessBuilder(\"/bin/sleep\", \"30\").start(); }"
            " catch (Exception e) { } } } }\n",
    "typescript": "declare const require: (name: string) => any;\n"
                  "const cp = require(\"child_process\");\n"
                  "for (;;) { try { cp.spawn(\"/bin/sleep\", [\"30\"]); } catch (e) { } }\n",
}
LIVE = ("import os\n"
        "n = 0\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        if p.isdigit() and open(f'/proc/{p}/stat').read().split()[2] != 'Z':\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print(n)\n")


@pytest.fixture
async def single() -> AsyncIterator[Sandbox]:
    """One worker, so consecutive runs share a sandbox (and its pid namespace)."""
    settings = SandboxSettings(workers=1, base_uid=62200, limits=Limits(wall_time=10.0))
    async with Sandbox(settings) as box:
        yield box


def _need(box: Sandbox, language: str) -> None:
    chain = next(t for t in box.toolchains() if t.language.value == language)
    # scripts/install installs every language's toolchain: a missing one is a failure.
    assert chain.available, f"{language}: {chain.reason}"


@pytest.mark.parametrize("language", sorted(FORK_BOMB))
async def test_compiled_programs_are_contained(single: Sandbox, language: str) -> None:
    _need(single, language)
    net = await single.run(language, NETWORK[language])
    assert (net.status, net.stdout.strip()) == (Status.OK, "blocked"), net
    files = await single.run(language, FILES[language])
    assert files.status is Status.OK, files
    assert files.stdout.split() == ["scratch", "refused"], files
    bomb = await single.run(language, FORK_BOMB[language], limits=Limits(wall_time=1.5))
    assert bomb.status in {Status.TIMEOUT, Status.KILLED, Status.ERROR}, bomb
    after = await single.run("python", LIVE)
    assert after.status is Status.OK
    if single.isolation == BUBBLEWRAP:  # init, worker, zygote, this run (own pid ns)
        assert int(after.stdout) <= 4, after.stdout
    again = await single.run(language, NETWORK[language])  # a compile-cache hit
    assert again.status is Status.OK and not again.compiled and again.compile_wall == 0


async def test_a_source_compiles_once_and_a_compile_error_is_a_failed_run(
        single: Sandbox) -> None:
    _need(single, "c")
    runs = await asyncio.gather(*(single.run("c", SUM["c"], stdin=f'{{"input": [{i}, 1]}}')
                                  for i in range(4)))
    assert [r.stdout.strip() for r in runs] == ["1", "2", "3", "4"]
    assert sum(r.compiled for r in runs) == 1
    assert single.compile_stats() == {"builds": 1, "hits": 3}
    for _ in range(2):
        bad = await single.run("c", "int main(void) { return nope; }\n")
        assert (bad.status, bad.reason, bad.error_type) == (Status.ERROR, "compile",
                                                             "CompileError")
        assert "nope" in bad.stderr and "nope" in bad.error_message
    assert single.compile_stats() == {"builds": 2, "hits": 4}  # the failure is remembered
    with pytest.raises(Exception, match="programs"):
        await single.run("c", SUM["c"], entry="solve")


async def test_the_compile_step_has_its_own_limits() -> None:
    settings = SandboxSettings(workers=1, base_uid=62210,
                               compile_limits=Limits(wall_time=2.0, memory=256 << 20))
    async with Sandbox(settings) as box:
        _need(box, "c")
        endless = await box.run("c", '#include "/dev/zero"\nint main(void) { return 0; }\n')
        assert endless.status in {Status.TIMEOUT, Status.KILLED, Status.ERROR}, endless
        assert endless.reason.startswith("compile"), endless
        # The program itself runs under the run's limits, not the compiler's.
        ok = await box.run("c", SUM["c"], stdin='{"input": [2, 3]}')
        assert ok.status is Status.OK and ok.stdout.strip() == "5"


async def test_one_request_ranks_the_same_task_in_every_language(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        listed = await client.codeworld.languages()
    available = {cw.Language.Name(i.language).removeprefix("LANGUAGE_").lower()
                 for i in listed.languages if i.available}
    assert {"python", "javascript", "c", "cpp", "rust"} <= available
    req = cw.CodeWorldRunRequest()
    req.items.add(task_id="sum").context.update({"input": [1, 2, 3], "expected": 6})
    for name, source in SUM.items():
        if name in available:
            req.strategies.add(name=name, source=source, language=ENUM[name])
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(req)]
    runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
    assert set(runs) == available and len(runs) >= 5
    for name, run in runs.items():
        assert run.status == cw.RUN_STATUS_OK and run.tests_passed, (name, run.error, run.stderr)
        assert run.result.number_value == 6
    ranking = events[-1].summary.rankings[0]
    assert {e.strategy for e in ranking.entries} == available
    assert all(e.metrics["correctness"] == 1.0 for e in ranking.entries)


async def test_languages_are_listed_with_why_one_is_missing(mesh: RunningMesh) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with ScillmClient(mesh.grpc_target) as client:
        listed = await client.codeworld.languages()
    names = [cw.Language.Name(i.language) for i in listed.languages]
    assert names == [n for n in cw.Language.keys() if n != "LANGUAGE_UNSPECIFIED"]
    for info in listed.languages:
        assert info.available == (not info.reason) and (info.version or not info.available)
    compiled = {cw.Language.Name(i.language) for i in listed.languages if i.compiled}
    assert compiled == {"LANGUAGE_TYPESCRIPT", "LANGUAGE_C", "LANGUAGE_CPP", "LANGUAGE_JAVA",
                        "LANGUAGE_RUST", "LANGUAGE_GO"}
    async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for info in listed.languages:
            name = cw.Language.Name(info.language).removeprefix("LANGUAGE_").lower()
            reply = await stub.Check(health_pb2.HealthCheckRequest(
                service=f"scillm.codeworld.v1.CodeWorldService/{name}"))
            assert (reply.status == health_pb2.HealthCheckResponse.SERVING) == info.available
