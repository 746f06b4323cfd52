"""SLA policies: their schema (`schema`), the policy in force and its hot reload (`store`), and what one
request is held to (`slo`). The names below are the package's interface."""

from router.sla.schema import (
    DEFAULT_POLICY,
    KEY_HASH_PREFIX,
    Budget,
    ControllerSettings,
    Price,
    QualityFloor,
    RateLimits,
    SlaPolicy,
    Tenant,
    TierPolicy,
    hash_api_key,
    load_policy_file,
    parse_policy,
    stored_digest,
)
from router.sla.slo import HEADERS, RequestSlo, resolve
from router.sla.store import PolicyStore

__all__ = [
    "DEFAULT_POLICY",
    "HEADERS",
    "KEY_HASH_PREFIX",
    "Budget",
    "ControllerSettings",
    "PolicyStore",
    "Price",
    "QualityFloor",
    "RateLimits",
    "RequestSlo",
    "SlaPolicy",
    "Tenant",
    "TierPolicy",
    "hash_api_key",
    "load_policy_file",
    "parse_policy",
    "resolve",
    "stored_digest",
]
