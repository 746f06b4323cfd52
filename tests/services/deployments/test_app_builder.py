from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.config import load_config
from services.deployments.app import build_app, deployment_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def test_example_config_matches_the_defaults() -> None:
    shipped = load_config(ROOT / "services" / "ragyard.yaml")
    defaults = load_config({})
    assert shipped.model_dump(exclude={"cache_dir", "corpus"}) == defaults.model_dump(exclude={"cache_dir", "corpus"})


def test_serve_config_builds_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    serve_cfg = yaml.safe_load((ROOT / "services" / "serve_config.yaml").read_text())
    [app_cfg] = serve_cfg["applications"]
    assert app_cfg["import_path"] == "services.deployments.app:build_app"
    app = build_app(app_cfg["args"])
    ingress = app._bound_deployment
    assert ingress.name == "gateway"
    _, router, retriever, workers = ingress.init_args
    assert router._bound_deployment.name == "router"
    assert retriever._bound_deployment.name == "retriever"
    assert [w._bound_deployment.name for w in workers.values()] == [
        "worker-smollm2-135m-instruct",
        "worker-qwen2-5-coder-0-5b-instruct",
    ]


def test_deployment_names_are_safe() -> None:
    assert deployment_name("org/model:7b") == "worker-org-model-7b"


def test_local_ray_is_sized_for_the_ladder() -> None:
    """The default ladder reserves 2.6 logical CPUs (two workers of 1 + gateway, router, retriever): a local
    Ray on a 2-core host must get at least 3, and a smaller explicit ray.num_cpus is refused up front."""
    from services.deployments.local import local_cpus
    from services.errors import ConfigError

    assert local_cpus(load_config({})) == pytest.approx(2.6)
    assert local_cpus(load_config({"models": [{"id": "m"}], "ray": {"num_cpus": 2}})) == pytest.approx(1.6)
    with pytest.raises(ConfigError, match=r"ray.num_cpus 2 cannot place the app: its replicas reserve 2.6 CPUs"):
        local_cpus(load_config({"ray": {"num_cpus": 2}}))
