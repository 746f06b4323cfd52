from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.config import load_config
from services.serve.app import build_app, deployment_name

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
    assert app_cfg["import_path"] == "services.serve.app:build_app"
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
    from services.errors import ConfigError
    from services.serve.local import local_cpus

    assert local_cpus(load_config({})) == pytest.approx(2.6)
    assert local_cpus(load_config({"models": [{"id": "m"}], "ray": {"num_cpus": 2}})) == pytest.approx(1.6)
    with pytest.raises(ConfigError, match=r"ray.num_cpus 2 cannot place the app: its replicas reserve 2.6 CPUs"):
        local_cpus(load_config({"ray": {"num_cpus": 2}}))


def test_every_deployment_has_a_bounded_queue_and_health_checks() -> None:
    config = load_config({"ray": {"max_queued_requests": 77, "health_check_period_s": 4, "health_check_timeout_s": 9}})
    app = build_app(config.model_dump(mode="json"))
    ingress = app._bound_deployment
    _, router, retriever, workers = ingress.init_args
    deployments = [ingress, router._bound_deployment, retriever._bound_deployment]
    deployments += [w._bound_deployment for w in workers.values()]
    for d in deployments:
        assert d.max_queued_requests == 77, d.name
        assert (d._deployment_config.health_check_period_s, d._deployment_config.health_check_timeout_s) == (4, 9)


def test_a_call_to_a_replica_that_died_is_sent_once_more() -> None:
    """Serve routes the second try to a live replica; a second death, or a full queue, is the caller's."""
    import asyncio

    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from services.serve.handles import once_more

    class Method:
        def __init__(self, failures: list[BaseException]) -> None:
            self.failures = failures
            self.calls = 0

        async def remote(self, *args: object, **kwargs: object) -> tuple[object, ...]:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return (*args, *kwargs.values())

    once = Method([ActorDiedError()])
    assert asyncio.run(once_more(once, 1, k=2)) == (1, 2) and once.calls == 2
    twice = Method([ActorDiedError(), ActorDiedError()])
    with pytest.raises(ActorDiedError):
        asyncio.run(once_more(twice, 1))
    full = Method([BackPressureError(num_queued_requests=3, max_queued_requests=2)])
    with pytest.raises(BackPressureError):
        asyncio.run(once_more(full))
    assert full.calls == 1


@pytest.mark.parametrize(("log_format", "encoding"), [("json", "JSON"), ("text", "TEXT")])
def test_server_log_format_sets_every_deployments_log_encoding(log_format: str, encoding: str) -> None:
    app = build_app(load_config({"server": {"log_format": log_format}}).model_dump(mode="json"))
    ingress = app._bound_deployment
    _, router, retriever, workers = ingress.init_args
    deployments = [ingress, router._bound_deployment, retriever._bound_deployment]
    deployments += [w._bound_deployment for w in workers.values()]
    for d in deployments:
        assert d._deployment_config.logging_config["encoding"] == encoding, d.name
