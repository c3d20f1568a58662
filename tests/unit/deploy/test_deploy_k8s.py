"""k8s/: the kustomize base and the production overlay, rendered and validated offline.

Rendering: the real kustomize (``sigs.k8s.io/kustomize/kustomize/v5`` at KUSTOMIZE_VERSION),
built once with ``go install`` through the Go module proxy into the project's tool cache
(``$STACK_CACHE_DIR/tools``, default ``~/.cache/position-pipeline/tools``; ~30 s the first
time, nothing afterwards). Schemas: every manifest of k8s/base and every object either
kustomization renders, against the Kubernetes OpenAPI schemas shipped inside the
``kubernetes-validate`` package (strict: an unknown field is an error), for the oldest and
the newest Kubernetes version we support. No cluster, no network once the tool is cached;
a missing tool fails the test, it never skips.

Then the invariants the deployment's design rests on, checked on the rendered objects.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streams.web.auth import OPEN_PATHS

REPO_ROOT = Path(__file__).resolve().parents[3]
K8S = REPO_ROOT / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"

KUSTOMIZE_VERSION = "v5.8.2"  # the newest that builds with this machine's Go 1.26 (v5.8.3 needs 1.27)
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest we support and the newest the schemas know

CONTRACT_VARIABLES = (
    "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SIGNALS_WS_URL", "BINANCE_FUTURES_URL", "BINANCE_API_KEY",
    "BINANCE_API_SECRET", "SYNC_INTERVAL_S", "DEFAULT_STOP_LOSS_PCT", "WEB_PORT", "WEB_BIND",
)
SECRET_VARIABLES = ("DATABASE_URL", "BINANCE_API_KEY", "BINANCE_API_SECRET", "WEB_AUTH_TOKEN")
POD_KINDS = ("StatefulSet", "Deployment", "Job")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


# --------------------------------------------------------------------------- tools


def _tool_cache() -> Path:
    return Path(os.environ.get("STACK_CACHE_DIR") or Path.home() / ".cache" / "position-pipeline") / "tools"


@pytest.fixture(scope="session")
def kustomize() -> Path:
    """The kustomize binary at KUSTOMIZE_VERSION, built from the Go module proxy when not cached."""
    binary = _tool_cache() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
    if not binary.exists():
        go = shutil.which("go")
        if go is None:
            pytest.fail("kustomize is not cached and `go` is not on PATH to build it "
                        f"(go install sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION})")
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=binary.parent) as staging:
            env = {**os.environ, "GOBIN": staging, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
            result = subprocess.run([go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                                    cwd=staging, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.fail(f"building kustomize {KUSTOMIZE_VERSION} failed:\n{result.stderr[-3000:]}")
            os.replace(Path(staging) / "kustomize", binary)
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == KUSTOMIZE_VERSION
    return binary


def _build(kustomize: Path, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=120)


def _render(kustomize: Path, directory: Path) -> list[dict]:
    result = _build(kustomize, directory)
    assert result.returncode == 0, f"kustomize build {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def k8s_copy(tmp_path_factory) -> Path:
    """k8s/ copied aside, with the production overlay's secrets.env made from its example."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(root / "overlays" / "production" / "secrets.env.example", root / "overlays" / "production" / "secrets.env")
    return root


@pytest.fixture(scope="session")
def base_objects(kustomize: Path) -> list[dict]:
    return _render(kustomize, BASE)


@pytest.fixture(scope="session")
def production_objects(kustomize: Path, k8s_copy: Path) -> list[dict]:
    return _render(kustomize, k8s_copy / "overlays" / "production")


@pytest.fixture(params=["base", "production"])
def rendered(request) -> list[dict]:
    """Both renderings: every invariant below holds for the base and for the overlay."""
    return request.getfixturevalue(f"{request.param}_objects")


# --------------------------------------------------------------------------- helpers


def _one(objects: list[dict], kind: str, component: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind
             and (component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def _pod_workloads(objects: list[dict]) -> Iterator[dict]:
    return (o for o in objects if o["kind"] in POD_KINDS)


def _containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _config_map(objects: list[dict]) -> dict:
    return _one(objects, "ConfigMap")


def _effective_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The variables a container sees: envFrom ConfigMaps/Secrets, then env (values or refs)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            secret = by_name[("Secret", source["secretRef"]["name"])]
            env.update({**secret.get("data", {}), **secret.get("stringData", {})})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                secret = by_name[("Secret", ref["secretKeyRef"]["name"])]
                keys = {**secret.get("data", {}), **secret.get("stringData", {})}
                assert ref["secretKeyRef"]["key"] in keys, f"{item['name']}: no key {ref['secretKeyRef']['key']}"
                env[item["name"]] = f"<secret {ref['secretKeyRef']['key']}>"
            elif "configMapKeyRef" in ref:
                env[item["name"]] = by_name[("ConfigMap", ref["configMapKeyRef"]["name"])]["data"][
                    ref["configMapKeyRef"]["key"]]
            else:
                env[item["name"]] = f"<{next(iter(ref))}>"
    return env


def _manifest_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", _manifest_files(), ids=lambda p: p.name)
def test_base_manifest_file_validates_strictly_against_kubernetes_schemas(manifest: Path, version: str):
    # Arrange
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]

    # Act / Assert: ValidationError (with the path) on any schema violation or unknown field
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_validate_strictly_against_kubernetes_schemas(rendered: list[dict], version: str):
    kinds = {document["kind"] for document in rendered}
    assert {"StatefulSet", "Deployment", "Service", "NetworkPolicy"} <= kinds, kinds  # never vacuously green
    for document in rendered:
        kubernetes_validate.validate(document, version, strict=True)


def test_schema_validation_rejects_a_misspelt_field(base_objects: list[dict]):
    # Arrange: the validator must be strict, or the tests above prove little.
    worker = copy.deepcopy(_one(base_objects, "StatefulSet", "worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True

    # Act / Assert
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(worker, KUBERNETES_VERSIONS[-1], strict=True)


def test_resources_quantities_are_well_formed(rendered: list[dict]):
    # The schemas accept any string as a quantity; the API server would refuse these.
    for workload in _pod_workloads(rendered):
        for container in _containers(workload):
            for bound in ("requests", "limits"):
                for resource, quantity in container["resources"][bound].items():
                    assert QUANTITY.match(str(quantity)), f"{workload['metadata']['name']}: {resource}={quantity}"
    for claim in _one(rendered, "StatefulSet", "worker")["spec"]["volumeClaimTemplates"]:
        assert QUANTITY.match(claim["spec"]["resources"]["requests"]["storage"])


# --------------------------------------------------------------------------- rendering


def test_production_overlay_refuses_to_render_without_its_secrets_file(kustomize: Path, tmp_path: Path):
    # Arrange: a checkout with no secrets.env (the file is git-ignored)
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("secrets.env"))

    # Act
    result = _build(kustomize, tmp_path / "k8s" / "overlays" / "production")

    # Assert: nothing to apply, so placeholders never reach a cluster
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


def test_secrets_env_is_git_ignored_and_the_example_holds_no_real_looking_values():
    # Arrange
    example = (PRODUCTION / "secrets.env.example").read_text()
    keys = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}

    # Act
    ignored = subprocess.run(["git", "check-ignore", "-q", str(PRODUCTION / "secrets.env")], cwd=REPO_ROOT)

    # Assert
    assert ignored.returncode == 0
    assert keys == set(SECRET_VARIABLES)
    assert "USER:PASSWORD@" in example


def test_base_secret_holds_only_clearly_marked_placeholders():
    # Arrange
    secret = yaml.safe_load((BASE / "secret.yaml").read_text())

    # Assert
    assert set(secret["stringData"]) == set(SECRET_VARIABLES)
    assert all("REPLACE_ME" in value for value in secret["stringData"].values())
    assert "data" not in secret


def test_production_overlay_replaces_the_placeholder_secret_with_secrets_env(production_objects: list[dict]):
    # Arrange
    secret = _one(production_objects, "Secret")

    # Assert: the generated values, base64 as kustomize writes them; no placeholder left
    assert set(secret["data"]) == set(SECRET_VARIABLES)
    assert "stringData" not in secret


# --------------------------------------------------------------------------- the workers


def test_workers_are_a_statefulset_with_rocksdb_claim_mounted_at_pipeline_data_dir(rendered: list[dict]):
    # Arrange
    worker = _one(rendered, "StatefulSet", "worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    data_dir = _effective_env(rendered, container)["PIPELINE_DATA_DIR"]
    claims = {claim["metadata"]["name"]: claim for claim in worker["spec"]["volumeClaimTemplates"]}

    # Act
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    # Assert
    assert data_dir == "/var/lib/position-pipeline"
    assert mounts.get(data_dir) in claims, f"{data_dir} is not on a volumeClaimTemplate: {mounts}"
    assert claims[mounts[data_dir]]["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod_volumes = {volume["name"] for volume in worker["spec"]["template"]["spec"].get("volumes", [])}
    assert mounts[data_dir] not in pod_volumes  # not shadowed by an ephemeral volume


def test_claim_template_spells_out_its_labels_so_every_kustomize_renders_it_alike():
    # kubectl's kustomize 5.5 adds `labels` to claim templates, 5.8 does not; a claim template
    # cannot change once the StatefulSet exists, so its labels are written out in the base.
    worker = yaml.safe_load((BASE / "worker-statefulset.yaml").read_text())
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    common = {k: v for entry in kustomization["labels"] for k, v in entry["pairs"].items()}

    (claim,) = worker["spec"]["volumeClaimTemplates"]
    assert common.items() <= claim["metadata"]["labels"].items()


def test_workers_have_a_headless_service_and_every_pod_advertises_its_stable_dns_name(rendered: list[dict]):
    # Arrange
    worker = _one(rendered, "StatefulSet", "worker")
    services = {s["metadata"]["name"]: s for s in rendered if s["kind"] == "Service"}
    headless = services[worker["spec"]["serviceName"]]
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    env = worker["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [item["name"] for item in env]

    # Act
    web_host = next(item["value"] for item in env if item["name"] == "WEB_HOST")

    # Assert: <pod>.<headless service>.<namespace>.svc, from the downward API, defined before use
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert web_host == f"$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc"
    fields = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"] for item in env
              if "fieldRef" in item.get("valueFrom", {})}
    assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert names.index("POD_NAME") < names.index("WEB_HOST") and names.index("POD_NAMESPACE") < names.index("WEB_HOST")


def test_positions_are_served_by_a_clusterip_service_on_the_workers_web_port(rendered: list[dict]):
    # Arrange
    worker = _one(rendered, "StatefulSet", "worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    web_port = int(_effective_env(rendered, container)["WEB_PORT"])
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]

    # Act
    clusterip = [s for s in rendered if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None"
                 and s["spec"]["selector"].items() <= pod_labels.items()]

    # Assert
    assert len(clusterip) == 1
    assert clusterip[0]["spec"]["type"] == "ClusterIP"
    assert clusterip[0]["spec"]["ports"] == [{"name": "web", "port": web_port, "targetPort": "web", "protocol": "TCP"}]
    assert container["ports"] == [{"name": "web", "containerPort": web_port, "protocol": "TCP"}]
    assert _effective_env(rendered, container)["WEB_BIND"] == "0.0.0.0"


def test_workers_probe_ready_and_health_on_the_web_port(rendered: list[dict]):
    # Arrange
    container = _one(rendered, "StatefulSet", "worker")["spec"]["template"]["spec"]["containers"][0]

    # Assert
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "web"}


def test_workers_roll_one_at_a_time_with_a_clean_shutdown_and_a_disruption_budget(rendered: list[dict]):
    # Arrange
    worker = _one(rendered, "StatefulSet", "worker")
    budget = _one(rendered, "PodDisruptionBudget", "worker")

    # Assert
    assert worker["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert worker["spec"]["podManagementPolicy"] == "Parallel"
    assert worker["spec"]["minReadySeconds"] >= 10
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert worker["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_workers_never_outnumber_the_partitions(rendered: list[dict]):
    # Arrange
    worker = _one(rendered, "StatefulSet", "worker")
    partitions = int(_config_map(rendered)["data"]["PIPELINE_TOPIC_PARTITIONS"])

    # Assert: a worker beyond the partition count would own nothing
    assert 1 <= worker["spec"]["replicas"] <= partitions


def test_scaled_workers_fail_over_within_seconds_to_a_hot_standby(production_objects: list[dict]):
    # Arrange: the production overlay runs 3 workers.
    worker = _one(production_objects, "StatefulSet", "worker")
    config = _config_map(production_objects)["data"]
    headless = next(o for o in production_objects if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None")

    # Assert: each partition has a hot copy elsewhere, a dead worker is noticed within
    # seconds, and peers reach each other (forwarding, fan-out) while /ready says 503.
    assert worker["spec"]["replicas"] >= 2
    assert int(config["PIPELINE_TABLE_STANDBY_REPLICAS"]) >= 1
    assert 6 <= float(config["PIPELINE_SESSION_TIMEOUT_S"]) <= 15
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_workers_require_the_token_from_the_secret_but_probe_routes_that_need_none(rendered: list[dict]):
    # Arrange
    container = _one(rendered, "StatefulSet", "worker")["spec"]["template"]["spec"]["containers"][0]
    token = next(item for item in container["env"] if item["name"] == "WEB_AUTH_TOKEN")

    # Assert: the token comes from the Secret; the probes use the routes left open (streams.web.auth)
    assert token["valueFrom"]["secretKeyRef"] == {"name": "position-pipeline-secrets", "key": "WEB_AUTH_TOKEN"}
    probed = {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probed <= OPEN_PATHS


def test_network_policies_admit_only_peers_and_labelled_clients(rendered: list[dict]):
    # Arrange
    policies = {o["metadata"]["name"]: o for o in rendered if o["kind"] == "NetworkPolicy"}
    worker = policies["position-pipeline-worker"]
    (rule,) = worker["spec"]["ingress"]

    # Assert: every pipeline pod is selected by a policy; the worker's web port admits its peers
    # and labelled clients only; nothing may connect to the ingest.
    assert set(policies) == {"position-pipeline-worker", "position-pipeline-sink", "position-pipeline-ingest"}
    assert worker["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert rule["ports"] == [{"port": "web", "protocol": "TCP"}]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "position-pipeline",
                                            "app.kubernetes.io/component": "worker"}}} in rule["from"]
    assert all(peer.get("podSelector", peer.get("namespaceSelector"))["matchLabels"] for peer in rule["from"])
    assert policies["position-pipeline-ingest"]["spec"]["ingress"] == []
    sink_ports = _one(rendered, "Deployment", "sink")["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "metrics", "containerPort": 6068, "protocol": "TCP"} in sink_ports


# --------------------------------------------------------------------------- sink, ingest, topics


@pytest.mark.parametrize("component", ["sink", "ingest"])
def test_sink_and_ingest_probe_a_heartbeat_file_on_an_emptydir(rendered: list[dict], component: str):
    # Arrange
    deployment = _one(rendered, "Deployment", component)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    path = f"/tmp/heartbeat/{component}"
    expected = ["python", "-m", "streams.heartbeat", "check", path, "--max-age", "60", "--quiet"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    # Assert
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == expected, probe
    assert _effective_env(rendered, container)["PIPELINE_HEARTBEAT_FILE"] == path
    assert "emptyDir" in volumes[mounts["/tmp/heartbeat"]]


def test_sink_replicas_share_one_group_and_ingest_keeps_one_connection(rendered: list[dict]):
    # Arrange
    sink = _one(rendered, "Deployment", "sink")
    ingest = _one(rendered, "Deployment", "ingest")

    # Assert
    assert sink["spec"]["replicas"] == 2
    assert sink["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "sinks"]
    assert ingest["spec"]["replicas"] == 1
    assert ingest["spec"]["strategy"] == {"type": "Recreate"}  # never two connections during an upgrade
    assert ingest["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "streams.ingest"]


def test_topics_job_creates_topics_with_the_configmaps_partition_count(rendered: list[dict]):
    # Arrange
    job = _one(rendered, "Job", "topics")
    container = job["spec"]["template"]["spec"]["containers"][0]
    worker = _one(rendered, "StatefulSet", "worker")["spec"]["template"]["spec"]["containers"][0]
    config = _config_map(rendered)

    # Act
    job_env = _effective_env(rendered, container)
    worker_env = _effective_env(rendered, worker)

    # Assert: the very ConfigMap the workers read, with nothing overriding the count
    assert container["command"][:4] == ["python", "-m", "streams.admin", "create-topics"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
    assert "PIPELINE_TOPIC_PARTITIONS" not in {item["name"] for item in container.get("env", [])}
    for name in ("PIPELINE_TOPIC_PARTITIONS", "PIPELINE_TOPIC_REPLICATION_FACTOR", "PIPELINE_TOPIC_PREFIX",
                 "PIPELINE_APP_ID", "KAFKA_BOOTSTRAP_SERVERS"):
        assert job_env.get(name) == config["data"].get(name) == worker_env.get(name), name
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_every_pipeline_pod_gets_the_contract_variables_it_needs(rendered: list[dict]):
    # Arrange
    def env_of(kind: str, component: str) -> dict[str, str]:
        container = _one(rendered, kind, component)["spec"]["template"]["spec"]["containers"][0]
        return _effective_env(rendered, container)

    # Assert: the worker sees all of them; the sink and the ingest what they use (least privilege)
    assert set(CONTRACT_VARIABLES) <= env_of("StatefulSet", "worker").keys()
    sink = env_of("Deployment", "sink")
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"} <= sink.keys()
    assert not {"BINANCE_API_KEY", "BINANCE_API_SECRET"} & sink.keys()
    ingest = env_of("Deployment", "ingest")
    assert {"KAFKA_BOOTSTRAP_SERVERS", "SIGNALS_WS_URL", "BINANCE_FUTURES_URL"} <= ingest.keys()
    assert not set(SECRET_VARIABLES) & ingest.keys()
    assert ingest["SIGNALS_WS_URL"].startswith(("ws://", "wss://"))  # never the built-in demo feed


# --------------------------------------------------------------------------- every pod


def test_every_container_has_requests_and_limits(rendered: list[dict]):
    for workload in _pod_workloads(rendered):
        for container in _containers(workload):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(bound, {}).keys(), \
                    f"{workload['metadata']['name']}/{container['name']}: {bound} {resources.get(bound)}"


def test_every_pod_and_container_is_non_root_read_only_and_unprivileged(rendered: list[dict]):
    for workload in _pod_workloads(rendered):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in _containers(workload):
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] == 10001, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "privileged" not in context or context["privileged"] is False, where
            tmp = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in volumes[tmp], f"{where}: /tmp must be an emptyDir"


def test_worker_volume_is_writable_by_the_pipeline_user(rendered: list[dict]):
    pod = _one(rendered, "StatefulSet", "worker")["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 10001


def test_namespace_enforces_the_restricted_pod_security_standard(rendered: list[dict]):
    # Arrange
    namespace = _one(rendered, "Namespace")

    # Assert
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], obj["metadata"]["name"]


def test_labels_are_consistent_and_selectors_match_their_pods(rendered: list[dict]):
    for obj in rendered:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "position-pipeline", where
        assert labels.get("app.kubernetes.io/part-of") == "position-pipeline", where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
    for workload in _pod_workloads(rendered):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        assert template_labels["app.kubernetes.io/component"] == component
        assert template_labels["app.kubernetes.io/name"] == "position-pipeline"
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


def test_references_resolve_to_rendered_objects(rendered: list[dict]):
    # Arrange
    present = {(o["kind"], o["metadata"]["name"]) for o in rendered}

    # Assert: every ConfigMap, Secret and ServiceAccount a pod names is in the same rendering
    for workload in _pod_workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in present
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        assert (kind, source[key]["name"]) in present, source
            _effective_env(rendered, container)  # asserts every secretKeyRef's key exists


def test_configmap_holds_no_secret(rendered: list[dict]):
    # Arrange
    config = _config_map(rendered)["data"]
    secret = _one(rendered, "Secret")
    secret_values = set(secret.get("stringData", {}).values())
    secret_values |= {base64.b64decode(value).decode() for value in secret.get("data", {}).values()}

    # Assert
    assert not set(SECRET_VARIABLES) & config.keys()
    assert not [key for key in config if re.search(r"SECRET|PASSWORD|TOKEN|API_KEY|CREDENTIAL", key)]
    for key, value in config.items():
        assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{key} carries a password"
        assert value not in secret_values, key


def test_images_are_all_the_one_pipeline_image(rendered: list[dict]):
    images = {container["image"] for workload in _pod_workloads(rendered) for container in _containers(workload)}
    assert len(images) == 1
    assert ":" in next(iter(images))  # a tag, never an implicit :latest


# --------------------------------------------------------------------------- the overlay


def test_production_overlay_scales_workers_and_bumps_resources(base_objects: list[dict],
                                                               production_objects: list[dict]):
    # Arrange
    base_worker = _one(base_objects, "StatefulSet", "worker")
    worker = _one(production_objects, "StatefulSet", "worker")
    config = _config_map(production_objects)["data"]

    def memory_limit(workload: dict) -> str:
        return workload["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]

    # Assert
    assert worker["spec"]["replicas"] == 3
    assert config["PIPELINE_TOPIC_PARTITIONS"] == "12"
    assert config["PIPELINE_TOPIC_REPLICATION_FACTOR"] == "3"
    assert (memory_limit(base_worker), memory_limit(worker)) == ("1Gi", "2Gi")
    assert worker["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    image = worker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/trading/position-pipeline:0.1.0"
    # The base's other settings survive the merge
    assert config["WEB_BIND"] == "0.0.0.0" and config["PIPELINE_DATA_DIR"] == "/var/lib/position-pipeline"
