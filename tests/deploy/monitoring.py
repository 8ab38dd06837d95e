"""What Keel's alert rules and dashboards name: their PromQL expressions and the metrics in
them, for the tests that check them against promtool and against what Keel serves."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
GRAFANA = ROOT / "deploy" / "grafana"

# A metric name in PromQL: `keel_...` not inside a label value or a recording rule's `keel:`
_METRIC = re.compile(r"(?<![\w:.\"-])(keel_[a-z0-9_]+|up)(?![\w:])")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def dashboards_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("keel_dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def dashboard_exprs() -> dict[str, str]:
    """ "dashboard / panel / refId" -> PromQL, from the committed JSON files."""
    import json

    found = {}
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found[f"{path.stem} / {panel['title']} / {target['refId']}"] = target["expr"]
    return found


def rule_exprs() -> dict[str, str]:
    found = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found[f"{path.name} / {rule.get('alert') or rule['record']}"] = rule["expr"]
    return found


def base_name(metric: str) -> str:
    """A sample's name as its family is declared (`x_bucket`, `x_total` -> `x`)."""
    for suffix in _SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def named_metrics(exprs: dict[str, str], exact: bool = False) -> dict[str, set[str]]:
    """metric name (its family's unless `exact`) -> where it is named"""
    named: dict[str, set[str]] = {}
    for where, expr in exprs.items():
        for metric in _METRIC.findall(expr):
            named.setdefault(metric if exact else base_name(metric), set()).add(where)
    return named


_SAMPLES_OF_TYPE = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def served_names(exposition: str) -> set[str]:
    """The sample names a /metrics text can hold: those of its declared families by their
    type (a labelled family without children yet has no samples) and those it holds."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()[:4]
            names |= {base_name(family) + s for s in _SAMPLES_OF_TYPE.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
