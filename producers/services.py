"""Ingestion in the local stack (`keel up`): two `keel ingest` replicas behind nginx
(Debian's package, installed on demand) at http://localhost:8080, and a development key."""

from __future__ import annotations

from pathlib import Path

from keel.local.services import ProcessService, Progress, Service, python_module
from keel.local.system import ensure_command
from keel.producers.auth import keys_file
from keel.producers.demo import ensure_dev_key
from keel.settings import KeelSettings

NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf.template"


def replica_ports(settings: KeelSettings) -> list[int]:
    return [int(p) for p in settings.ingest_replica_ports.split(",") if p.strip()]


class IngestReplica(ProcessService):
    def __init__(self, settings: KeelSettings, index: int, port: int) -> None:
        argv = python_module("keel.producers", "ingest", "--port", str(port), "--workers", "1")
        super().__init__(
            f"ingest-{index}", argv, settings, port=port,
            ops_url=f"http://127.0.0.1:{port}", order=60, principal="keel-ingest",
            env={
                "KEEL_INGEST_TRUST_FORWARDED": "true",
                "KEEL_HOME": str(settings.home),
                "KEEL_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "KEEL_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
                "KEEL_INGEST_KEYS_FILE": str(keys_file(settings)),
                "KEEL_INGEST_TOPIC_PREFIX": settings.ingest_topic_prefix,
            },
        )  # fmt: skip
        self.settings = settings

    def start(self, progress: Progress) -> bool:
        started = super().start(progress)
        if self.name == "ingest-1":
            key, created = ensure_dev_key(self.settings)
            progress(f"development API key{' (new)' if created else ''}: {key}")
        return started


def render_nginx_conf(
    settings: KeelSettings, prefix: Path, certificate: Path | None = None
) -> Path:
    """nginx.conf for the replicas, from deploy/nginx/nginx.conf.template; with `certificate`
    (a PEM file holding the key and the chain) nginx also terminates TLS on
    KEEL_INGEST_LB_TLS_PORT."""
    upstreams = "\n".join(f"        server 127.0.0.1:{p};" for p in replica_ports(settings))
    tls = ""
    if certificate is not None and settings.ingest_lb_tls_port:
        tls = (
            f"        listen 127.0.0.1:{settings.ingest_lb_tls_port} ssl;\n"
            f"        ssl_certificate {certificate};\n"
            f"        ssl_certificate_key {certificate};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    text = (
        NGINX_CONF.read_text()
        .replace("{{UPSTREAMS}}", upstreams)
        .replace("{{LISTEN}}", str(settings.ingest_lb_port))
        .replace("{{TLS}}", tls)
        .replace("{{MAX_BODY}}", str(settings.ingest_max_body_bytes + 64 * 1024))
        .replace("{{PREFIX}}", str(prefix))
    )
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


class NginxService(ProcessService):
    def __init__(self, settings: KeelSettings) -> None:
        port = settings.ingest_lb_port
        super().__init__(
            "nginx", [], settings, port=port, health_url=f"http://127.0.0.1:{port}/healthz",
            order=65,
        )  # fmt: skip
        self.settings = settings

    def prepare(self, progress: Progress) -> None:
        from keel.local.secured import running_secured

        nginx = ensure_command("nginx", "nginx-light", progress)
        prefix = self.settings.home / "nginx"
        # On the secured stack: HTTPS too, with the local CA's certificate for localhost.
        secured = running_secured(self.settings)
        certificate = secured[0].security.broker_keystore if secured else None
        conf = render_nginx_conf(self.settings, prefix, certificate)
        if certificate is not None and self.settings.ingest_lb_tls_port:
            progress(
                f"nginx terminates TLS on https://localhost:{self.settings.ingest_lb_tls_port} "
                f"(CA {secured[0].security.ca_file})"  # type: ignore[index]
            )
        self.argv = [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]


def services(settings: KeelSettings) -> list[Service]:
    replicas: list[Service] = [
        IngestReplica(settings, i, port) for i, port in enumerate(replica_ports(settings), 1)
    ]
    return [*replicas, NginxService(settings)]
