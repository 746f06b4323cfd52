"""The Helm chart, offline: lint, render, validate every manifest against its schema, and load the Serve
config it renders with our own `build_app`, so the chart and the app cannot drift apart."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, RAYSERVICE_SCHEMA, ROOT, by_kind, documents, helm_template, run, tool

pytestmark = pytest.mark.deploy

GPU_VALUES = str(CHART / "values-gpu.yaml")
VARIANTS = {
    "default": (),
    "gpu": ("-f", GPU_VALUES),
    "everything": (
        "-f",
        GPU_VALUES,
        "--set",
        "ingress.enabled=true",
        "--set",
        "apiKeys.keys[0]=sk-operator-0001",
        "--set",
        "redis.auth.enabled=false",
        "--set",
        "metrics.podMonitor.enabled=true",
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, documents(helm_template(*VARIANTS[request.param]).stdout)


def _write(docs: list[dict[str, Any]], folder: Path) -> list[Path]:
    paths = []
    for i, doc in enumerate(docs):
        path = folder / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        paths.append(path)
    return paths


def _rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (rs,) = by_kind(docs, "RayService")
    return rs


def test_lint_strict_with_default_and_gpu_values(helm: str) -> None:
    for extra in ((), ("-f", GPU_VALUES)):
        out = run(helm, "lint", "--strict", CHART, *extra).stdout
        assert "0 chart(s) failed" in out


def test_core_manifests_pass_strict_kubernetes_validation(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, docs = rendered
    # The CRDs' kinds (KubeRay's RayService, prometheus-operator's PodMonitor) are checked by tests of their own.
    core = [d for d in docs if d["kind"] not in ("RayService", "PodMonitor")]
    kinds = {d["kind"] for d in core}
    assert {"ConfigMap", "ServiceAccount", "Pod"} <= kinds
    if name != "everything":
        assert {"StatefulSet", "Service", "Secret"} <= kinds
    else:
        assert "Ingress" in kinds
    proc = run(tool("kubernetes-validate"), "--strict", "-k", "1.33.0", *_write(core, tmp_path))
    assert proc.stdout.count("passed") == len(core), proc.stdout


def test_the_pod_monitor_scrapes_every_ray_pod_on_its_metrics_port() -> None:
    docs = documents(
        helm_template(
            "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.podMonitor.labels.release=prom"
        ).stdout
    )
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["metadata"]["labels"]["release"] == "prom"
    selector = pm["spec"]["selector"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    rs = _rayservice(docs)["spec"]["rayClusterConfig"]
    templates = [rs["headGroupSpec"]["template"], *(g["template"] for g in rs["workerGroupSpecs"])]
    params = [rs["headGroupSpec"]["rayStartParams"], *(g["rayStartParams"] for g in rs["workerGroupSpecs"])]
    (allowed,) = [e["values"] for e in selector["matchExpressions"] if e["key"] == "app.kubernetes.io/component"]
    for template, start in zip(templates, params, strict=True):
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector["matchLabels"].items())
        assert labels["app.kubernetes.io/component"] in allowed
        (container,) = template["spec"]["containers"]
        port = next(p for p in container["ports"] if p["name"] == endpoint["port"])
        assert start["metrics-export-port"] == str(port["containerPort"])
    # The Redis pod is not a Ray pod: not scraped.
    (redis,) = by_kind(docs, "StatefulSet")
    assert redis["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] not in allowed
    # Off by default (the CRD may not be installed).
    assert not by_kind(documents(helm_template().stdout), "PodMonitor")


def test_every_deployment_scales_out_and_the_retrievers_follow_the_corpus_log() -> None:
    docs = documents(helm_template().stdout)
    rs = _rayservice(docs)
    (app_cfg,) = _serve_config(rs)["applications"]
    scaled = {d["name"]: d["autoscaling_config"] for d in app_cfg["deployments"]}
    assert scaled["router"]["max_replicas"] > 1 and scaled["retriever"]["max_replicas"] > 1
    env = {
        e["name"]: e
        for e in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RAGYARD_INDEX__LOG_URL"]["value"] == "$(REDIS_URL)"
    names = list(env)
    assert names.index("REDIS_URL") < names.index("RAGYARD_INDEX__LOG_URL")  # Kubernetes expands only earlier vars


def test_rayservice_passes_the_crd_schema(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    _, docs = rendered
    (path,) = _write([_rayservice(docs)], tmp_path)
    run(tool("check-jsonschema"), "--schemafile", RAYSERVICE_SCHEMA, path)


def test_rayservice_schema_rejects_unknown_fields_and_wrong_types(tmp_path: Path) -> None:
    good = _rayservice(documents(helm_template("-f", GPU_VALUES).stdout))
    typo = copy.deepcopy(good)
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    deep = copy.deepcopy(good)
    deep["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["gpus"] = 1
    not_a_string = copy.deepcopy(good)
    not_a_string["spec"]["serveConfigV2"] = yaml.safe_load(good["spec"]["serveConfigV2"])
    for doc, expected in (
        (typo, "rayStartParam"),
        (wrong_type, "'two' is not of type 'integer'"),
        (deep, "gpus"),
        (not_a_string, "is not of type 'string'"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = run(tool("check-jsonschema"), "--schemafile", RAYSERVICE_SCHEMA, path, check=False)
        assert proc.returncode != 0 and expected in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["sla.policy.tiers.interactive.latency_ms=fast"], "sla.policy.tiers.interactive.latency_ms"),
        (["sla.policy.tiers.interactive.colour=red"], "Additional property colour is not allowed"),
        (["sla.policy.tiers.batch.priority=500"], "sla.policy.tiers.batch.priority"),
        (["sla.policy.tenants.acme.tier=batch"], "sla.policy.tenants.acme: api_keys is required"),
        (
            ["sla.policy.tenants.acme.api_keys[0]=sk-acme-0001", "sla.policy.tenants.acme.tier=gold"],
            'sla.policy.tenants.acme: tier "gold" does not exist',
        ),
        (["sla.policy.default_tier=premium"], 'sla.policy.default_tier: "premium" is not a tier'),
        (["sla.policy.tiers.interactive.ttft_ms=20000"], "ttft_ms must not exceed latency_ms"),
        (["app.config.retrieval.top_k=0"], "app.config.retrieval.top_k"),
        (["app.config.models[0].engine=onnx"], "app.config.models.0.engine"),
        (["redis.enabled=false"], "give redis.url or redis.existingSecret"),
        (["app.autoscaling.gateway.max_replicas=0"], "app.autoscaling.gateway.max_replicas"),
    ],
)
def test_values_schema_and_checks_reject_a_bad_policy_or_config(sets: list[str], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    proc = helm_template(*args, check=False)
    assert proc.returncode != 0, proc.stdout[:500]
    assert message in proc.stderr, proc.stderr


def _serve_config(rs: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert isinstance(config, dict)
    return config


def test_serve_config_is_loaded_by_our_build_app(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    from ray.serve._private.build_app import build_app as serve_build
    from ray.serve.schema import ServeDeploySchema

    from services.config import load_config

    _, docs = rendered
    config = _serve_config(_rayservice(docs))
    ServeDeploySchema.model_validate(config)  # what `serve deploy` / KubeRay's dashboard call accept
    (app_cfg,) = config["applications"]
    module, attr = app_cfg["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    app = builder(copy.deepcopy(app_cfg["args"]))  # our code, with the chart's args
    built = serve_build(app, name=app_cfg["name"])
    names = {d.name for d in built.deployments}
    assert built.ingress_deployment_name == "gateway"
    overridden = {d["name"] for d in app_cfg["deployments"]}
    assert overridden <= names, f"the chart scales deployments the app does not have: {overridden - names}"
    ids = [m.id for m in load_config(app_cfg["args"]).models]
    from services.serve.app import deployment_name

    assert {deployment_name(i) for i in ids} <= overridden  # every model worker autoscales
    for dep in app_cfg["deployments"]:
        assert dep["num_replicas"] == "auto" and dep["autoscaling_config"]["max_replicas"] >= 1


def test_sla_configmap_is_a_valid_policy_mounted_where_the_app_reads_it(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    from router.sla import parse_policy
    from services.config import load_config

    _, docs = rendered
    rs = _rayservice(docs)
    args = _serve_config(rs)["applications"][0]["args"]
    app = load_config(args)
    assert app.sla.enabled and app.sla.policy_path is not None
    policy_path = Path(app.sla.policy_path)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-sla")]
    policy = parse_policy(yaml.safe_load(cm["data"][policy_path.name]), models=[m.id for m in app.models])
    assert set(policy.tiers) == {"interactive", "standard", "batch"}
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"])
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == str(policy_path.parent) and "subPath" not in mount  # subPath never updates


def test_tenant_keys_reach_the_configmap_only_as_digests() -> None:
    from router.sla import hash_api_key, parse_policy

    digest = hash_api_key("sk-already-hashed-1")
    rendered = helm_template(
        "--set",
        "sla.policy.tenants.acme.api_keys[0]=sk-acme-secret-0001",
        "--set",
        "sla.policy.tenants.acme.tier=interactive",
        "--set",
        f"sla.policy.tenants.ops.api_keys[0]={digest}",
        "--set",
        "sla.policy.tenants.ops.tier=batch",
    ).stdout
    assert "sk-acme-secret-0001" not in rendered
    (cm,) = [d for d in by_kind(documents(rendered), "ConfigMap") if d["metadata"]["name"].endswith("-sla")]
    policy = parse_policy(yaml.safe_load(cm["data"]["policy.yaml"]))
    assert policy.tenant_for_key("sk-acme-secret-0001") == "acme"
    assert policy.tenant_for_key("sk-already-hashed-1") == "ops"
    assert policy.tenants["ops"].api_keys == [digest]


def test_api_keys_and_redis_come_from_secrets() -> None:
    docs = documents(helm_template("--set", "apiKeys.keys[0]=sk-operator-0001").stdout)
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    assert set(secrets) == {"rel-ragyard-api-keys", "rel-ragyard-redis"}
    import base64

    keys = json.loads(base64.b64decode(secrets["rel-ragyard-api-keys"]["data"]["api-keys"]))
    assert keys == ["sk-operator-0001"]
    head = _rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env["RAGYARD_SERVER__API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "rel-ragyard-api-keys"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "rel-ragyard-redis"
    assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@rel-ragyard-redis:6379/0"
    assert "sk-operator-0001" not in json.dumps(_rayservice(docs))
    external = documents(helm_template("--set", "redis.enabled=false", "--set", "redis.existingSecret=my-redis").stdout)
    assert not by_kind(external, "StatefulSet")
    head = _rayservice(external)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    url = next(e for e in head["env"] if e["name"] == "REDIS_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "redis-url"}


def test_pods_probe_the_gateway_and_gpu_workers_get_gpus() -> None:
    rs = _rayservice(documents(helm_template("-f", GPU_VALUES).stdout))
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    # KubeRay deploys the app once the head is Ready: the head keeps KubeRay's own Ray health probes.
    assert "readinessProbe" not in head and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        container = group["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["image"].endswith("-gpu")
    assert groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
    assert rs["spec"]["serveService"]["metadata"]["name"] == "rel-ragyard-gateway"


def test_generated_schemas_are_up_to_date() -> None:
    import importlib.util

    for script, target in (
        ("build_values_schema.py", CHART / "values.schema.json"),
        ("build_rayservice_schema.py", RAYSERVICE_SCHEMA),
    ):
        spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "helm" / "schemas" / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.render() == target.read_text(), f"run `python helm/schemas/{script}`"


def test_readme_values_example_installs(tmp_path: Path) -> None:
    """The values example in the README renders and validates, with and without the GPU values."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("# my-values.yaml\n", 1)[1].split("```", 1)[0]
    values = tmp_path / "my-values.yaml"
    values.write_text(block)
    for extra in ((), ("-f", GPU_VALUES)):
        docs = documents(helm_template(*extra, "-f", str(values)).stdout)
        (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-sla")]
        assert "sk-acme-1" not in cm["data"]["policy.yaml"]
        (path,) = _write([_rayservice(docs)], tmp_path)
        run(tool("check-jsonschema"), "--schemafile", RAYSERVICE_SCHEMA, path)


def _index_volumes(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cluster = _rayservice(docs)["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    out = []
    for pod in pods:
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "index")
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "index")
        out.append({**volume, "mountPath": mount["mountPath"]})
    return out


def test_the_index_is_a_cache_of_the_corpus_log_on_a_pod_or_on_a_kept_rwx_claim() -> None:
    """By default each pod's index is an emptyDir (the corpus log in Redis is the record; a new replica rebuilds
    from it). With persistence on, every Ray pod mounts one ReadWriteMany claim at index.dir, the claim survives
    `helm uninstall`, and the app waits for an upgrade's old writer (index.lock_timeout_s)."""
    from services.config import load_config

    default = documents(helm_template().stdout)
    assert not by_kind(default, "PersistentVolumeClaim")
    assert all(v["emptyDir"]["sizeLimit"] == "2Gi" for v in _index_volumes(default))
    docs = documents(helm_template("--set", "index.persistence.enabled=true").stdout)
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    app = load_config(_serve_config(_rayservice(docs))["applications"][0]["args"])
    assert app.index.lock_timeout_s == 600
    for volume in _index_volumes(docs):
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert volume["mountPath"] == app.index.dir

    own = documents(
        helm_template(
            "--set", "index.persistence.enabled=true", "--set", "index.persistence.existingClaim=docs-nfs"
        ).stdout
    )
    assert not by_kind(own, "PersistentVolumeClaim")
    assert {v["persistentVolumeClaim"]["claimName"] for v in _index_volumes(own)} == {"docs-nfs"}

    off = documents(helm_template("--set", "index.persistence.enabled=false").stdout)
    assert not by_kind(off, "PersistentVolumeClaim")
    assert all(v["emptyDir"]["sizeLimit"] == "2Gi" for v in _index_volumes(off))
