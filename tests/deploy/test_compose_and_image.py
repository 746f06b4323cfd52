"""compose.yaml and the Dockerfile, offline: the compose spec's schema, hadolint, and what a demanding
operator relies on (loopback ports, healthchecks, restart policies, a non-root image with its models)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, run, tool

pytestmark = pytest.mark.deploy

_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _defaults(text: str) -> str:
    """Interpolate `${VAR:-default}` the way compose does when VAR is unset."""
    return _DEFAULT.sub(lambda m: m.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_matches_the_compose_spec() -> None:
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", ROOT / "compose.yaml")


def test_compose_spec_check_catches_mistakes(tmp_path: Path) -> None:
    bad = yaml.safe_load((ROOT / "compose.yaml").read_text())
    bad["services"]["redis"]["restart"] = "sometimes-maybe"
    bad["services"]["ragyard"]["helthcheck"] = {}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path, check=False)
    assert proc.returncode != 0 and "helthcheck" in proc.stdout


def test_compose_services_are_loopback_healthchecked_and_restarted(compose: dict[str, Any]) -> None:
    assert "version" not in compose  # obsolete in the compose spec
    services = compose["services"]
    assert set(services) == {"ragyard", "redis"}
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        assert svc["healthcheck"]["test"][0] == "CMD", name
        for port in svc.get("ports", []):
            assert _defaults(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "ports" not in services["redis"]  # reached over the compose network only
    assert "/readyz" in " ".join(services["ragyard"]["healthcheck"]["test"])
    assert services["ragyard"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {v["source"] for v in services["redis"]["volumes"]} == {"redis-data"}
    assert "redis-data" in compose["volumes"]


def test_compose_sla_policy_mount_feeds_a_valid_config(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.sla import load_policy_file
    from services.config import load_config

    svc = compose["services"]["ragyard"]
    env = {k: _defaults(str(v)) for k, v in svc["environment"].items()}
    mount = next(v for v in svc["volumes"] if v["target"] == "/etc/ragyard/sla")
    assert mount["type"] == "bind" and mount["read_only"] is True  # a folder: replaced files are seen too
    folder = ROOT / _defaults(mount["source"])
    policy_path = Path(env["RAGYARD_SLA__POLICY_PATH"])
    assert policy_path.parent == Path(mount["target"])
    policy = load_policy_file(folder / policy_path.name)
    assert policy.tiers
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    assert config.sla.enabled and config.sla.policy_path == str(policy_path)
    assert config.cache.response_cache_url == config.sla.budget_url == "redis://redis:6379/0"
    assert config.server.api_keys == []


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint"), "--config", ROOT / ".hadolint.yaml", ROOT / "Dockerfile")


def test_image_is_non_root_healthchecked_and_converts_models_at_build() -> None:
    import dockerfile

    cmds = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    names = [c.cmd for c in cmds]
    users = [c.value[0] for c in cmds if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit()  # numeric: the kubelet checks runAsNonRoot with it
    last_user = max(i for i, n in enumerate(names) if n == "USER")
    prepare = [i for i, c in enumerate(cmds) if c.cmd == "RUN" and "ragyard prepare" in c.value[0]]
    assert prepare and prepare[0] > last_user  # models are converted into the runtime user's cache
    (health,) = [c for c in cmds if c.cmd == "HEALTHCHECK"]
    assert "/readyz" in " ".join(health.value)
    assert [c.value for c in cmds if c.cmd == "CMD"] == [("ragyard", "serve")]
    copied = {c.value[0] for c in cmds if c.cmd == "COPY"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    # Every package of the served app; the benchmarks (bench/) stay out: `ragyard` there has the serving commands.
    assert packages - {"bench"} <= copied, f"the image misses {packages - {'bench'} - copied}"
    assert "bench" not in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".tmp"} <= set(ignored)
    variant = next(c for c in cmds if c.cmd == "ARG" and c.value[0].startswith("VARIANT="))
    assert variant.value[0] == "VARIANT=cpu"
    gpu = next(c.value[0] for c in cmds if c.cmd == "RUN" and "VARIANT" in c.value[0])
    assert "[vllm]" in gpu and "faiss-gpu" in gpu


@pytest.mark.model
def test_prepare_puts_every_model_in_place() -> None:
    """What the image's build runs: with the models already in place here it only checks them (the default
    ladder runs on llama.cpp: each model's checked GGUF file)."""
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "prepare"], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "model smollm2-135m-instruct:" in proc.stdout and "embedder:" in proc.stdout
    gguf = Path(proc.stdout.split("model smollm2-135m-instruct:")[1].split()[0])
    with gguf.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
