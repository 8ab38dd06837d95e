"""The Go tools the deployment checks need, installed on first use through the Go module
proxy at pinned versions (into the virtualenv, so `make clean` removes them): kustomize to
render deploy/k8s, and KEDA's module for its ScaledObject CRD schema (read, never copied)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.7.1"
KEDA = "github.com/kedacore/keda/v2@v2.21.0"
TOOLS = Path(sys.executable).resolve().parent.parent / "tools" / "bin"


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise RuntimeError("the deployment checks need Go (https://go.dev/dl/) to fetch kustomize")
    return go


def _run(cmd: list[str], **env: str) -> str:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


@cache
def kustomize() -> str:
    binary = TOOLS / "kustomize"
    if not binary.exists():
        TOOLS.mkdir(parents=True, exist_ok=True)
        _run([_go(), "install", KUSTOMIZE], GOBIN=str(TOOLS))
    return str(binary)


def render(overlay: Path) -> str:
    """`kustomize build` of an overlay; files outside it (topics.toml, the rules and the
    dashboards) are read where they live, hence LoadRestrictionsNone."""
    return _run([kustomize(), "build", "--load-restrictor", "LoadRestrictionsNone", str(overlay)])


@cache
def keda_crd(name: str = "keda.sh_scaledobjects.yaml") -> Path:
    found = json.loads(_run([_go(), "mod", "download", "-json", KEDA]))
    return Path(found["Dir"]) / "config" / "crd" / "bases" / name


if __name__ == "__main__":  # `make k8s OVERLAY=prod`: the rendered manifests on stdout
    sys.stdout.write(
        render(Path(__file__).resolve().parents[2] / "deploy/k8s/overlays" / sys.argv[1])
    )
