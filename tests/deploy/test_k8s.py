"""deploy/k8s, proven offline (no cluster runs here): both overlays render with kustomize,
every object validates strictly against Kubernetes 1.30 and 1.37 schemas and every KEDA
object against KEDA's own CRD schema, and the manifests agree with Keel itself: settings
that exist, probes on the ports the services serve, consumer groups and topics the workers
use, autoscaling never above a topic's partitions in topics.toml, and what every pod must
have (probes, resources, non-root, spread, a disruption budget)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from keel.settings import KeelSettings
from keel.topics import load_topics
from tests.deploy.monitoring import ROOT
from tests.deploy.tools import keda_crd, render

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
KEDA_KINDS = {"ScaledObject": "keda.sh_scaledobjects.yaml",
              "TriggerAuthentication": "keda.sh_triggerauthentications.yaml"}  # fmt: skip
WORKLOADS = {"Deployment", "StatefulSet"}
# Secrets prod expects made outside the repository (named in the prod overlay and README)
EXTERNAL_SECRETS = {"keel-secrets", "keel-api-keys", "keel-keda-kafka"}

# The command a container runs -> the setting naming the port it serves by default
PORT_SETTINGS = {
    ("registry",): "registry_port",
    ("ingest",): "ingest_port",
    ("streams", "worker"): "streams_web_port",
    ("jobs", "worker"): "jobs_http_port",
    ("outbox", "run"): "outbox_http_port",
    ("pgsink", "run"): "pgsink_http_port",
    ("archive", "run"): "archive_http_port",
    ("webhooks", "run"): "webhooks_http_port",
    ("lag",): "lag_exporter_port",
}
PORT_FLAGS = ("--port", "--http-port", "--serve")


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(render(K8S / "overlays" / overlay)) if d)


def objects(overlay: str, *kinds: str) -> Iterator[dict[str, Any]]:
    return (d for d in rendered(overlay) if not kinds or d["kind"] in kinds)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def config(overlay: str) -> dict[str, str]:
    [found] = [
        c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"].startswith("keel-config")
    ]
    data: dict[str, str] = found["data"]
    return data


def settings_of(overlay: str) -> KeelSettings:
    """The settings a pod of this overlay reads (its ConfigMap)."""
    return KeelSettings(**{k.removeprefix("KEEL_").lower(): v for k, v in config(overlay).items()})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_kubernetes_schemas(overlay: str) -> None:
    checked = 0
    for doc in objects(overlay):
        if doc["kind"] in KEDA_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(
                    f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc}"
                ) from None
        checked += 1
    assert checked >= 30


def _strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused (the API server prunes them silently;
    here a typo must fail)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(keda_crd(KEDA_KINDS[kind]).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_validate_against_kedas_own_crds(overlay: str) -> None:
    found = list(objects(overlay, *KEDA_KINDS))
    assert {d["kind"] for d in found} == set(KEDA_KINDS)
    for doc in found:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        try:
            jsonschema.validate(doc, keda_schema(doc["kind"]))
        except jsonschema.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}"
            ) from None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_keel_setting_named_exists(overlay: str) -> None:
    known = {f"KEEL_{name.upper()}" for name in KeelSettings.model_fields}
    text = render(K8S / "overlays" / overlay) + (K8S / "base" / "keel.env").read_text()
    named = set(re.findall(r"\bKEEL_[A-Z0-9_]+", text))
    assert named and not named - known, named - known
    settings_of(overlay)  # and each value is one the setting accepts


def _command(container: dict[str, Any]) -> tuple[tuple[str, ...], int | None]:
    args = container.get("args", [])
    for prefix in PORT_SETTINGS:
        if tuple(args[: len(prefix)]) == prefix:
            flags = [args[i + 1] for i, a in enumerate(args[:-1]) if a in PORT_FLAGS]
            return prefix, int(flags[0]) if flags else None
    raise AssertionError(f"unknown command {args}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_services_are_on_the_port_each_process_serves(overlay: str) -> None:
    settings = settings_of(overlay)
    services = {s["metadata"]["name"]: s for s in objects(overlay, "Service")}
    for workload in objects(overlay, *WORKLOADS):
        [container] = pod_spec(workload)["containers"]
        prefix, flag = _command(container)
        serves = flag if flag is not None else getattr(settings, PORT_SETTINGS[prefix])
        assert container["ports"] == [{"name": "http", "containerPort": serves}], workload[
            "metadata"
        ]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(serves)
        service = services.get(workload["metadata"]["name"])
        if service is not None:
            assert service["spec"]["ports"] == [
                {"name": "http", "port": serves, "targetPort": "http"}
            ]
    # The addresses the settings give other processes match the Services.
    assert settings.schema_registry_url == f"http://registry:{settings.registry_port}"
    assert settings.jobs_views_url == f"http://streams:{settings.streams_web_port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_has_probes_resources_non_root_and_spread(overlay: str) -> None:
    budgets = {p["metadata"]["name"]: p for p in objects(overlay, "PodDisruptionBudget")}
    for doc in objects(overlay, *WORKLOADS, "Job"):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert (
                set(c["resources"]["requests"])
                == set(c["resources"]["limits"])
                == {"cpu", "memory"}
            ), name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name
            assert {"configMapRef", "secretRef"} <= {k for e in c["envFrom"] for k in e}, name
        if doc["kind"] == "Job":
            continue
        assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} >= {
            "kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name  # fmt: skip
        labels = doc["spec"]["selector"]["matchLabels"]
        if doc["metadata"]["name"] != "lag-exporter":  # one reader: a gap is harmless
            budget = budgets[doc["metadata"]["name"]]
            assert budget["spec"]["selector"]["matchLabels"] == labels, name
            assert budget["spec"]["maxUnavailable"] == 1, name


def test_stream_workers_keep_their_tables_on_a_volume() -> None:
    [streams] = list(objects("prod", "StatefulSet"))
    [claim] = streams["spec"]["volumeClaimTemplates"]
    [container] = pod_spec(streams)["containers"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}[
        claim["metadata"]["name"]
    ]
    assert str(settings_of("prod").streams_data_dir) == mount
    # each pod advertises its own address for query forwarding
    [host] = [e for e in container["env"] if e["name"] == "KEEL_STREAMS_WEB_HOST"]
    assert host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def _consumer(workload: dict[str, Any], settings: KeelSettings) -> list[tuple[str, str]]:
    """(group, topic) pairs the workload's process consumes, from Keel's own code."""
    from keel.consumers.handlers import build_handlers

    [container] = pod_spec(workload)["containers"]
    args = container["args"]
    if args[:2] == ["streams", "worker"]:
        return [(settings.streams_app_id, settings.streams_source_topic)]
    if args[:2] == ["jobs", "worker"]:
        types = [a for a in args[2:] if not a.startswith("-") and not a.isdigit()]
        return [(f"keel.jobs.{h.name}", h.topics.source) for h in build_handlers(types, settings)]
    for sink in ("pgsink", "archive", "webhooks"):
        if args[:2] == [sink, "run"]:
            group = getattr(settings, f"{sink}_group")
            return [(group, t) for t in getattr(settings, f"{sink}_topics").split(",")]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_consumer_group_scales_on_its_own_lag_never_above_its_partitions(
    overlay: str,
) -> None:
    settings = settings_of(overlay)
    partitions = {t.name: t.partitions for t in load_topics(ROOT / "topics.toml").specs()}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in objects(overlay, "ScaledObject")}
    consumers = 0
    for workload in objects(overlay, *WORKLOADS):
        pairs = _consumer(workload, settings)
        if not pairs:
            continue
        consumers += 1
        name = workload["metadata"]["name"]
        so = scaled[name]  # every consumer group is autoscaled
        assert so["spec"]["scaleTargetRef"]["kind"] == workload["kind"]
        [trigger] = so["spec"]["triggers"]
        meta = trigger["metadata"]
        # the group and the topic the process really uses: its source, never a changelog
        assert [(meta["consumerGroup"], meta["topic"])] == pairs, name
        assert meta["allowIdleConsumers"] == "false"  # KEDA's own cap at the partitions
        assert meta["bootstrapServersFromEnv"] == "KEEL_BOOTSTRAP_SERVERS"
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        assert so["spec"]["maxReplicaCount"] <= partitions[meta["topic"]], name
    # streams, three job types, pgsink, archive; and the webhook sink where its component is
    assert consumers == len(scaled) == (7 if overlay == "dev" else 6)
    # A stream worker restoring its tables after a scale-up is not counted as lagging
    # again at once: scale-ups wait out a restore, scale-downs a longer cool-down.
    behavior = scaled["streams"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 300
    assert scaled["streams"]["spec"]["cooldownPeriod"] >= 600


def test_a_scaled_object_above_its_partitions_would_fail() -> None:
    """The partition ceiling is read from topics.toml, not assumed: 7 workers of `events`
    (6 partitions) is refused by the same check."""
    partitions = {t.name: t.partitions for t in load_topics(ROOT / "topics.toml").specs()}
    assert partitions["events"] == 6
    assert not partitions["events"] >= 7


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_setup_jobs_and_their_wait_run_before_the_workers(overlay: str) -> None:
    jobs = {
        j["metadata"]["name"]: pod_spec(j)["containers"][0]["args"] for j in objects(overlay, "Job")
    }
    assert jobs["topics-apply"][:3] == ["topics", "apply", "--yes"]
    assert jobs["schemas-register"] == ["schemas", "register"]
    for workload in objects(overlay, *WORKLOADS):
        if workload["metadata"]["name"] == "lag-exporter":
            continue
        [wait] = pod_spec(workload)["initContainers"]
        assert "keel topics plan" in wait["command"][-1], workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets_and_exist(overlay: str) -> None:
    made = {s["metadata"]["name"] for s in objects(overlay, "Secret")}
    text = yaml.safe_dump_all(rendered(overlay))
    referenced = set(re.findall(r"(?:secretName|name): (keel-[a-z-]+?(?:-[a-z0-9]{10})?)\n", text))
    wanted = {r for r in referenced if any(r.startswith(s) for s in EXTERNAL_SECRETS)}
    if overlay == "prod":
        assert not made  # never committed: made outside the repository
        assert {re.sub(r"-[a-z0-9]{10}$", "", w) for w in wanted} == EXTERNAL_SECRETS
    else:
        assert wanted <= made
    # no secret value in a ConfigMap
    assert not {"KEEL_SASL_PASSWORD", "KEEL_POSTGRES_DSN"} & set(config(overlay))
    # Kafka is the user's: nothing of a broker in the release
    assert not any(
        "kafka"
        in (
            d.get("spec", {})
            .get("template", {})
            .get("spec", {})
            .get("containers", [{}])[0]
            .get("image", "")
        )
        for d in objects(overlay, *WORKLOADS)
    )
