"""Cross-file checks of the deploy files that no schema can express (run by ./validate).

Needs only PyYAML. Prints one line per problem and exits 1 when there is any.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVICES = ("completion", "prove", "codeworld", "agent")
GRPC_PORT = 50051
problems: list[str] = []


def problem(where: str, text: str) -> None:
    problems.append(f"{where}: {text}")


def health_names() -> dict[str, str]:
    """Full gRPC service names, read from proto/scillm/<svc>/v1/*.proto."""
    names: dict[str, str] = {}
    for svc in SERVICES:
        for proto in sorted((REPO / "proto" / "scillm" / svc / "v1").glob("*.proto")):
            text = proto.read_text(encoding="utf-8")
            package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
            service = re.search(r"^service\s+(\w+Service)\s*\{", text, re.M)
            if package and service:
                names[svc] = f"{package.group(1)}.{service.group(1)}"
        if svc not in names:
            problem("proto", f"no service definition found for {svc}")
    return names


def served(args: list[str]) -> list[str]:
    """Services named by `--service NAME` arguments (all four when none; [] for the
    shim-only `--service none`)."""
    out = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--service"]
    if out == ["none"]:
        return []
    return out or list(SERVICES)


def target_host(target: str) -> str:
    """The host a `dns:///host:port` or `host:port` target names."""
    return re.sub(r"^dns:///", "", target).split(":")[0]


# ---------------------------------------------------------------- Kubernetes

def check_k8s(names: dict[str, str], models: Any) -> None:
    k8s = HERE / "k8s"
    kust = yaml.safe_load((k8s / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = list(kust.get("resources") or [])
    present = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in listed:
        if not (k8s / name).is_file():
            problem("k8s/kustomization.yaml", f"lists {name}, which does not exist")
    for name in present:
        if name not in listed:
            problem("k8s/kustomization.yaml", f"does not list {name}")
    if len(set(listed)) != len(listed):
        problem("k8s/kustomization.yaml", "lists a file twice")

    objs: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for name in present:
        for doc in yaml.safe_load_all((k8s / name).read_text(encoding="utf-8")):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                if key in objs:
                    problem(f"k8s/{name}", f"{key[0]} {key[1]} defined twice")
                objs[key] = (f"k8s/{name}", doc)

    def get(kind: str) -> dict[str, tuple[str, dict[str, Any]]]:
        return {n: v for (k, n), v in objs.items() if k == kind}

    deployments, services = get("Deployment"), get("Service")
    configmaps, hpas = get("ConfigMap"), get("HorizontalPodAutoscaler")

    # The model ConfigMap says what ../models.yaml says.
    cm = configmaps.get("scillm-models")
    if cm is None:
        problem("k8s", "no ConfigMap scillm-models")
    elif yaml.safe_load(cm[1].get("data", {}).get("models.yaml", "")) != models:
        problem(cm[0], "data['models.yaml'] differs from scripts/deploy/models.yaml")

    # Callers dial every service as dns:///scillm-<name>:50051 and balance round_robin
    # over the pods DNS returns: only a headless Service returns them all.
    for svc in SERVICES:
        found = services.get(f"scillm-{svc}")
        if found is not None and found[1]["spec"].get("clusterIP") != "None":
            problem(found[0], f"Service scillm-{svc} must be headless (clusterIP: None) so "
                    "dns:/// round_robin sees every pod")
    want_target = f"dns:///scillm-completion:{GRPC_PORT}"

    for svc in SERVICES:
        dep = deployments.get(f"scillm-{svc}")
        if dep is None:
            problem("k8s", f"no Deployment scillm-{svc}")
            continue
        where, d = dep
        if f"scillm-{svc}" not in services:
            problem("k8s", f"no Service scillm-{svc}")
        pod = d["spec"]["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "scillm"]
        args = list(c.get("args") or [])
        if served(args) != [svc]:
            problem(where, f"container args {args} should serve {svc} alone")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe == "startupProbe" and probe not in c:
                continue
            grpc = (c.get(probe) or {}).get("grpc")
            if not grpc:
                problem(where, f"{probe} is not a native gRPC probe")
            elif grpc.get("port") != GRPC_PORT or grpc.get("service") != names.get(svc):
                problem(where, f"{probe}.grpc should be port {GRPC_PORT}, "
                        f"service {names.get(svc)}, not {grpc}")
        if GRPC_PORT not in [p.get("containerPort") for p in c.get("ports", [])]:
            problem(where, f"container does not expose {GRPC_PORT}")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                problem(where, f"resources.{part} needs cpu and memory")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if svc != "completion" and env.get("SCILLM_COMPLETION_TARGET") != want_target:
            problem(where, f"SCILLM_COMPLETION_TARGET should be {want_target}")
        cfg = env.get("SCILLM_CONFIG_PATH")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        cm_vols = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", [])
                   if "configMap" in v}
        if not cfg or not any(cfg == f"{mounts.get(v)}/models.yaml" and n == "scillm-models"
                              for v, n in cm_vols.items()):
            problem(where, "SCILLM_CONFIG_PATH must name models.yaml of the mounted "
                    "ConfigMap scillm-models")
        otel = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        host = re.sub(r"^https?://", "", otel).split(":")[0]
        if otel and host not in services:
            problem(where, f"OTEL_EXPORTER_OTLP_ENDPOINT {otel}: no Service {host}")
        scrape = d["spec"]["template"]["metadata"].get("annotations", {})
        if scrape.get("prometheus.io/scrape") == "true":
            port = int(scrape.get("prometheus.io/port", 0))
            if port not in [p.get("containerPort") for p in c.get("ports", [])]:
                problem(where, f"prometheus.io/port {port} is no container port")
            if "--no-http" in args and env.get("SCILLM_METRICS_PORT") != str(port):
                problem(where, f"with --no-http, metrics come from SCILLM_METRICS_PORT, "
                        f"which should be {port}")

    check_k8s_shim(deployments, services)

    # Every Service selects the pods of some Deployment, on ports they expose.
    for name, (where, s) in services.items():
        sel = s["spec"].get("selector") or {}
        match = [d for _, d in deployments.values()
                 if sel and sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        if not match:
            problem(where, f"Service {name} selects no Deployment's pods")
            continue
        ports = {p.get("name") for c in match[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        ports |= {p.get("containerPort") for c in match[0]["spec"]["template"]["spec"]
                  ["containers"] for p in c.get("ports", [])}
        for p in s["spec"].get("ports", []):
            if p.get("targetPort", p.get("port")) not in ports:
                problem(where, f"Service {name} port {p} targets no container port")
    for name, (where, d) in deployments.items():
        sel = d["spec"]["selector"]["matchLabels"]
        if not sel.items() <= d["spec"]["template"]["metadata"]["labels"].items():
            problem(where, f"Deployment {name}: selector does not match its pod labels")

    # HPAs scale existing Deployments whose pods request CPU; Completion has one.
    targets = set()
    for name, (where, h) in hpas.items():
        ref = h["spec"]["scaleTargetRef"]
        targets.add(ref["name"])
        dep = deployments.get(ref["name"])
        if ref.get("kind") != "Deployment" or dep is None:
            problem(where, f"HPA {name} scales {ref}, which is not a Deployment here")
            continue
        if not all("cpu" in (c.get("resources") or {}).get("requests", {})
                   for c in dep[1]["spec"]["template"]["spec"]["containers"]):
            problem(where, f"HPA {name}: {ref['name']} requests no CPU")
        if h["spec"].get("minReplicas", 1) > h["spec"]["maxReplicas"]:
            problem(where, f"HPA {name}: minReplicas > maxReplicas")
    if "scillm-completion" not in targets:
        problem("k8s", "no HorizontalPodAutoscaler for scillm-completion")


def check_k8s_shim(deployments: dict[str, tuple[str, dict[str, Any]]],
                   services: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """The shim-only Deployment fronts every service through its headless Service."""
    found = deployments.get("scillm-shim")
    if found is None:
        problem("k8s", "no Deployment scillm-shim (the HTTP door, --service none)")
        return
    where, d = found
    if "scillm-shim" not in services:
        problem("k8s", "no Service scillm-shim")
    (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "scillm"]
    args = list(c.get("args") or [])
    if served(args) != [] or "--no-http" in args:
        problem(where, f"container args {args} should be --service none, HTTP on")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for svc in SERVICES:
        want = f"dns:///scillm-{svc}:{GRPC_PORT}"
        if env.get(f"SCILLM_{svc.upper()}_TARGET") != want:
            problem(where, f"SCILLM_{svc.upper()}_TARGET should be {want}")
    if 4000 not in [p.get("containerPort") for p in c.get("ports", [])]:
        problem(where, "container does not expose the HTTP port 4000")
    for probe in ("readinessProbe", "livenessProbe"):
        if not c.get(probe):
            problem(where, f"no {probe}")
    if ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path") == "/readyz":
        problem(where, "readinessProbe should not be /readyz: one service down would take "
                "every door of the shim out of the Service")


# ---------------------------------------------------------------- compose

def check_compose(names: dict[str, str]) -> None:
    where = "compose.yaml"
    doc = yaml.safe_load((HERE / where).read_text(encoding="utf-8"))
    services: dict[str, Any] = doc["services"]
    scillm = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("scillm")}
    hosts: dict[str, list[str]] = {svc: [] for svc in SERVICES}
    for name, s in scillm.items():
        for svc in served(list(s.get("command") or [])):
            hosts[svc].append(name)
    completion_hosts = hosts["completion"]
    shims = [n for n, s in scillm.items() if served(list(s.get("command") or [])) == []]
    for name, s in scillm.items():
        serves = served(list(s.get("command") or []))
        env = s.get("environment") or {}
        test = (s.get("healthcheck") or {}).get("test") or []
        if test[:2] != ["CMD", "scillm-healthcheck"] or \
                sorted(test[2:]) != sorted(names[x] for x in serves):
            problem(where, f"{name}: healthcheck should check {[names[x] for x in serves]}")
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://jaeger:4317":
            problem(where, f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT should be http://jaeger:4317")
        cfg = env.get("SCILLM_CONFIG_PATH")
        binds = [v.split(":") for v in s.get("volumes", []) if str(v).startswith(".")]
        if not any(b[1] == cfg for b in binds):
            problem(where, f"{name}: SCILLM_CONFIG_PATH {cfg} is not a mounted file")
        for b in binds:
            if not (HERE / b[0]).exists():
                problem(where, f"{name}: mounts {b[0]}, which does not exist")
        if set(serves) & {"prove", "codeworld", "agent"}:
            target = str(env.get("SCILLM_COMPLETION_TARGET", ""))
            if target_host(target) not in completion_hosts:
                problem(where, f"{name}: SCILLM_COMPLETION_TARGET {target!r} names no "
                        "service serving completion")
        if not serves:  # the shim: every door reaches the service that serves it
            for svc in SERVICES:
                target = str(env.get(f"SCILLM_{svc.upper()}_TARGET", ""))
                if target_host(target) not in hosts[svc]:
                    problem(where, f"{name}: SCILLM_{svc.upper()}_TARGET {target!r} names "
                            f"no service serving {svc}")
            if not any(str(p).endswith(":4000") for p in s.get("ports") or []):
                problem(where, f"{name}: the shim should publish its HTTP port 4000")
        if set(serves) & {"prove", "codeworld", "agent"}:
            opts = set(s.get("security_opt") or [])
            if not {"seccomp=unconfined", "apparmor=unconfined"} <= opts:
                problem(where, f"{name}: the bubblewrap sandbox needs seccomp/apparmor "
                        "unconfined (user namespaces)")
        build = s.get("build") or {}
        if build and not (HERE / build["context"] / build["dockerfile"]).is_file():
            problem(where, f"{name}: build.dockerfile does not exist")
    for svc, names_ in hosts.items():
        if len(names_) != 1:
            problem(where, f"{svc} should be served by exactly one service, not {names_}")
        elif served(list(scillm[names_[0]].get("command") or [])) != [svc]:
            problem(where, f"{svc} should run in its own service, so it scales alone")
    if len(shims) != 1:
        problem(where, f"want one shim-only service (--service none), not {shims}")
    for n in ("redis", "jaeger"):
        if n not in services:
            problem(where, f"no {n} service")
    if "redis" in services and "healthcheck" not in services["redis"]:
        problem(where, "redis has no healthcheck")
    jaeger = services.get("jaeger") or {}
    if "all-in-one" not in str(jaeger.get("image")) or \
            str((jaeger.get("environment") or {}).get("COLLECTOR_OTLP_ENABLED")) != "true":
        problem(where, "jaeger should be all-in-one with COLLECTOR_OTLP_ENABLED=true")


# ---------------------------------------------------------------- Dockerfile

def check_dockerfile() -> None:
    where = "Dockerfile"
    text = (HERE / where).read_text(encoding="utf-8")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    first_from = next(line for line in lines if line.startswith("FROM "))
    if first_from.split()[1] != "python:3.11-slim-bookworm":
        problem(where, f"base image should be python:3.11-slim-bookworm: {first_from}")
    entry = [line for line in lines if line.startswith("ENTRYPOINT ")]
    if len(entry) != 1:
        problem(where, "needs exactly one ENTRYPOINT")
    else:
        argv = json.loads(entry[0][len("ENTRYPOINT "):])
        want = ["scillm", "serve", "--host", "0.0.0.0", "--http-host", "0.0.0.0"]
        if argv[-len(want):] != want:
            problem(where, f"ENTRYPOINT should end with {want}: {argv}")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problem(where, "the image should end as a non-root USER")
    for pkg in ("coq", "z3", "bubblewrap"):
        if not re.search(rf"apt-get install[^\n]*\b{pkg}\b", "\n".join(lines)):
            problem(where, f"apt-get install lacks {pkg}")
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                if not src.startswith("--") and not (REPO / src).exists():
                    problem(where, f"COPY source {src} does not exist (context: repo root)")
    if not (HERE / "Dockerfile.dockerignore").is_file():
        problem(where, "no Dockerfile.dockerignore beside it")


def main() -> int:
    names = health_names()
    models = yaml.safe_load((HERE / "models.yaml").read_text(encoding="utf-8"))
    if not isinstance(models, dict) or not models.get("model_list"):
        problem("models.yaml", "needs a non-empty model_list")
    check_k8s(names, models)
    check_compose(names)
    check_dockerfile()
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
