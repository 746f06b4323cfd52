"""The application config: one pydantic model, loaded from YAML with environment overrides.

Precedence, highest first: environment (``RAGYARD_<SECTION>__<FIELD>``, plus the short ``HOST``,
``PORT`` and ``REDIS_URL``), the YAML file, the defaults below.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cache.config import CacheConfig, ChunkCacheConfig
from core.config import PROJECT_ROOT, Section
from core.errors import ConfigError
from retrieval.config import CorpusConfig, EmbedderConfig, IndexConfig, RetrievalConfig
from retrieval.errors import UnknownPolicyError
from retrieval.policies.registry import available_policies, register_policy
from router.config import RouterConfig, SlaConfig
from router.sla import KEY_HASH_PREFIX
from services.workers.config import (
    DEFAULT_LADDER,
    DEFAULT_MODEL_ID,
    LlamaCppConfig,
    ModelConfig,
    SpeculativeConfig,
    VllmConfig,
)

# Each package owns its section; this module composes them (and re-exports them for callers above).
__all__ = [
    "PROJECT_ROOT",
    "AppConfig",
    "CacheConfig",
    "ChunkCacheConfig",
    "CorpusConfig",
    "DEFAULT_LADDER",
    "DEFAULT_MODEL_ID",
    "EmbedderConfig",
    "IndexConfig",
    "ModelConfig",
    "RayConfig",
    "RetrievalConfig",
    "RouterConfig",
    "ServerConfig",
    "SlaConfig",
    "LlamaCppConfig",
    "SpeculativeConfig",
    "VllmConfig",
    "load_config",
]


class ResponseFormatLimits(Section):
    """Bounds on a ``response_format`` JSON schema, checked at the edge before any engine compiles it
    (`services/http/schema_budget.py`): over one is a 400 ``response_format_too_complex``."""

    max_bytes: int = Field(16_384, gt=0, description="Largest schema, in bytes as JSON.")
    max_depth: int = Field(16, ge=2, le=64, description="Deepest nesting of the schema as JSON.")
    max_nodes: int = Field(
        2_000, gt=0, description="Schema nodes once every `$ref` is followed (a fan-out of references counts in full)."
    )
    max_pattern_chars: int = Field(256, gt=0, description="Longest `pattern` string.")
    max_pattern_states: int = Field(
        2_000, gt=0, description="States of a `pattern`'s state machine (what the torch engine's enforcer builds)."
    )
    pattern_deadline_s: float = Field(
        1.0, gt=0, description="Seconds a `pattern`'s state machine may take to build (in a separate process)."
    )


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="HTTP bind address; HOST overrides it.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port; PORT overrides it.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted (declared or chunked).")
    max_upload_bytes: int = Field(
        32 << 20,
        gt=0,
        description="Largest body of a document upload (`POST /v1/documents`: PDFs, Word files, multipart "
        "batches); every other route keeps `max_body_bytes`.",
    )
    max_json_depth: int = Field(32, ge=4, le=512, description="Deepest nesting a JSON body may have.")
    api_keys: list[str] = Field(
        default_factory=list,
        description="Operator keys (Bearer), in clear or as `sha256:<64 hex>`: every route, the shared "
        "corpus, metrics and readiness details. Empty, with no tenants in the SLA policy = no auth.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header names served (port ignored); ['*'] = any. None: the loopback names when "
        "`host` is a loopback address (so a DNS-rebound name cannot reach a local server), any otherwise.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (scheme://host[:port]) besides the server's own that may send "
        "state-changing requests; ['*'] = any.",
    )
    sse_keepalive_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="A streamed response silent this long (retrieval, a multi-step plan's reasoning) sends an SSE "
        "comment, so proxies and clients with idle timeouts keep the connection.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as JSON objects (Ray Serve's LoggingConfig encoding under Serve)."
    )
    web_chat: bool = Field(True, description="Serve the web chat page at `/`.")
    response_format: ResponseFormatLimits = Field(
        default_factory=ResponseFormatLimits, description="Bounds on a `response_format` JSON schema."
    )

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for n, key in enumerate(keys):
            if not key or key != key.strip() or any(c.isspace() for c in key):
                raise ValueError(f"api_keys[{n}]: a key must be non-empty and hold no whitespace")
            if key.startswith(KEY_HASH_PREFIX) and not re.fullmatch(r"[0-9a-f]{64}", key[len(KEY_HASH_PREFIX) :]):
                raise ValueError(f"api_keys[{n}]: a hashed key is `sha256:` and 64 lowercase hex digits")
        return keys

    def effective_allowed_hosts(self) -> list[str] | None:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        try:
            loopback = ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        return ["127.0.0.1", "localhost", "[::1]", "::1"] if loopback else None


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster to join; None starts a local one.")
    temp_dir: str = Field(".tmp/ray", description="Ray's temp dir (sessions, logs, sockets).")
    num_cpus: int | None = Field(None, gt=0, description="CPUs a local Ray may use.")
    worker_replicas: int = Field(1, gt=0, description="Replicas of each model worker.")
    retriever_replicas: int = Field(1, gt=0, description="Replicas of the retriever.")
    gateway_replicas: int = Field(1, gt=0, description="Replicas of the HTTP gateway.")
    router_replicas: int = Field(
        1,
        gt=0,
        description="Replicas of the router. Above 1, the budgets must be in Redis (sla.budget_url): the replicas "
        "share their load view and calibration there.",
    )
    worker_routing: Literal["affinity", "default"] = Field(
        "affinity",
        description="How a request picks a worker replica: affinity (to the replica that owns most of its chunks' "
        "KV, or its prompt prefix; services/deployments/affinity.py) or default (Serve's power of two choices).",
    )
    max_queued_requests: int = Field(
        256,
        ge=1,
        description="Requests a deployment's callers may queue beyond its replicas' capacity; past it a call "
        "fails at once (503 `overloaded`, Retry-After 1) instead of waiting.",
    )
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve calls each replica's check_health.")
    health_check_timeout_s: float = Field(
        30.0, gt=0, description="How long a check may take before Serve counts the replica unhealthy and replaces it."
    )


class AppConfig(BaseSettings):
    """Everything Ragyard reads at startup."""

    model_config = SettingsConfigDict(
        env_prefix="RAGYARD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    cache_dir: str = Field(str(Path.home() / ".cache" / "ragyard"), description="Converted models and other caches.")
    models: list[ModelConfig] = Field(
        # The embedded default's ladder runs on llama.cpp, reading the packaged GGUF as it is, with chunk KV
        # computed ahead (README: Engines).
        default_factory=lambda: [
            ModelConfig(id=m, path="package:" + m, engine="llamacpp", chunk_cache=ChunkCacheConfig(enabled=True))
            for m in DEFAULT_LADDER
        ],
        min_length=1,
        description="Models the service runs, cheapest first (the first is the default when `auto` has no "
        "quality table to route by).",
    )
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="Query/passage embedder.")
    index: IndexConfig = Field(default_factory=IndexConfig, description="FAISS index and doc store.")
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig, description="Retrieval policies.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Complexity router.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Response cache.")
    sla: SlaConfig = Field(default_factory=SlaConfig, description="SLA policies and the budget controller.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP edge.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="Sample corpus.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray and Serve placement.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the YAML file (passed as init kwargs), which beats the defaults.
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _register_plugins(cls, data: Any) -> Any:
        # Before the sections validate: the router's and the SLA policy's policy names may name a plug-in.
        plugins = ((data.get("retrieval") or {}) if isinstance(data, dict) else {}).get("plugins") or {}
        if not isinstance(plugins, dict):
            return data  # the field's own validation reports it
        for name, target in plugins.items():
            try:
                register_policy(str(name), str(target))
            except UnknownPolicyError as exc:
                raise ValueError(f"retrieval.plugins.{name}: {exc}") from exc
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> AppConfig:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError(f"model ids must be unique, got {ids}")
        if "auto" in ids:
            raise ValueError("'auto' is reserved for the router's choice; rename that model")
        if self.retrieval.top_k > self.retrieval.max_top_k:
            raise ValueError("retrieval.top_k must not exceed retrieval.max_top_k")
        for weak, strong in self.router.cascade.to.items():
            if weak not in ids or strong not in ids or weak == strong:
                raise ValueError(
                    f"router.cascade.to: {weak!r} -> {strong!r} must join two different configured models ({ids})"
                )
        if self.retrieval.default_policy not in available_policies():
            raise ValueError(
                f"retrieval.default_policy {self.retrieval.default_policy!r} is unknown; "
                f"valid: {', '.join(available_policies())}"
            )
        if self.ray.retriever_replicas > 1 and not self.index.log_url:
            raise ValueError(
                "ray.retriever_replicas > 1 needs index.log_url (the corpus log the replicas share): without it "
                "each replica would hold only the documents written through it"
            )
        redis_budgets = (self.sla.budget_url or "").startswith(("redis://", "rediss://", "unix://"))
        if self.ray.router_replicas > 1 and self.sla.enabled and not redis_budgets:
            raise ValueError(
                "ray.router_replicas > 1 needs sla.budget_url on Redis: the routers share budgets, load and "
                "calibration there"
            )
        return self

    def model(self, model_id: str) -> ModelConfig:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]

    def dragin_threshold(self, model_id: str) -> float:
        """DRAGIN's threshold for one model: the model's own setting, else ``retrieval.dragin_threshold``
        when the config sets it, else the packaged model's calibrated value, else the field's default."""
        from services.workers.model_store import PACKAGE_PREFIX, catalog

        model = self.model(model_id)
        if model.dragin_threshold is not None:
            return model.dragin_threshold
        if "dragin_threshold" in self.retrieval.model_fields_set:
            return self.retrieval.dragin_threshold
        path = model.path or PACKAGE_PREFIX + DEFAULT_MODEL_ID
        if path.startswith(PACKAGE_PREFIX):
            entry = catalog().get(path[len(PACKAGE_PREFIX) :])
            if entry is not None and entry.dragin_threshold is not None:
                return entry.dragin_threshold
        return self.retrieval.dragin_threshold


_SHORT_ENV = {"HOST": ("server", "host"), "PORT": ("server", "port"), "REDIS_URL": ("cache", "response_cache_url")}


# What a config can be given as: the model itself, its fields as a dict (a Serve deployment's argument), a YAML
# file's path, or None (`RAGYARD_CONFIG`, else the defaults).
ConfigSource = AppConfig | dict[str, Any] | str | Path | None


def load_config(source: ConfigSource = None) -> AppConfig:
    """Build the config from a model, a dict or a YAML path (None: `RAGYARD_CONFIG` or defaults)."""
    if isinstance(source, AppConfig):
        return source
    data: dict[str, Any]
    if source is None:
        env_path = os.environ.get("RAGYARD_CONFIG")
        source = Path(env_path) if env_path else None
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    for var, (section, key) in _SHORT_ENV.items():
        value = os.environ.get(var)
        if value:
            sect = dict(data.get(section) or {})
            sect[key] = value
            data[section] = sect
    redis_url = os.environ.get("REDIS_URL")
    if redis_url and not (data.get("sla") or {}).get("budget_url"):
        # Budgets go where the response cache goes, so replicas share them.
        data["sla"] = {**(data.get("sla") or {}), "budget_url": redis_url}
    try:
        return AppConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
