"""Who is asking: a request's bearer key names an operator (``server.api_keys``), a tenant (the SLA
policy's keys) or nobody. Keys are matched by their SHA-256, never compared in clear, so a match takes the
same time whatever the key; a stored digest (``sha256:...``) is matched by the key it hashes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

from retrieval.documents import SHARED_NAMESPACE
from router.sla import SlaPolicy, hash_api_key, stored_digest

# Routes only an operator key opens once keys are configured: the metrics name tenants and their spend,
# and the schema pages list every route.
OPERATOR_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
# Routes outside /v1/ that need a key like /v1/ does once keys are configured (vLLM's tokenizer routes).
KEYED_PATHS = frozenset({"/tokenize", "/detokenize"})


@dataclass(frozen=True)
class Principal:
    kind: Literal["operator", "tenant", "anonymous"]
    tenant: str | None = None

    @property
    def operator(self) -> bool:
        return self.kind == "operator"

    @property
    def namespace(self) -> str:
        """Where this principal's documents go: a tenant's own namespace; the shared one otherwise."""
        return self.tenant if self.kind == "tenant" and self.tenant else SHARED_NAMESPACE

    @property
    def readable(self) -> tuple[str, ...]:
        """The namespaces its questions are answered from: its own and the shared one."""
        return (self.namespace, SHARED_NAMESPACE) if self.namespace != SHARED_NAMESPACE else (SHARED_NAMESPACE,)


ANONYMOUS = Principal("anonymous")
OPERATOR = Principal("operator")


def bearer_token(scope: Scope) -> str:
    auth = Headers(scope=scope).get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def digests(keys: list[str]) -> frozenset[str]:
    """The digests of configured keys, given in clear or already as ``sha256:<hex>``."""
    return frozenset(stored_digest(k) for k in keys)


class KeyRing:
    """Operator keys and the SLA policy's tenants, and whether a key is required at all. Once keys are
    required they stay required for this process: a policy reload that drops the last tenant closes the
    API to everyone but the operators, it never opens it."""

    def __init__(self, operator_keys: list[str]) -> None:
        self.operators = digests(operator_keys)
        self._required = bool(self.operators)

    def required(self, policy: SlaPolicy | None) -> bool:
        if not self._required and policy is not None and policy.tenants:
            self._required = True
        return self._required

    def identify(self, token: str, policy: SlaPolicy | None) -> Principal:
        if not token:
            return ANONYMOUS
        digest = hash_api_key(token)
        if digest in self.operators:
            return OPERATOR
        tenant = policy.tenant_for_digest(digest) if policy is not None else None
        return Principal("tenant", tenant) if tenant is not None else ANONYMOUS


def principal(request: Request) -> Principal:
    """The request's principal as the key middleware found it; an open server treats everyone as an operator."""
    found: Principal = getattr(request.state, "principal", OPERATOR)
    if found.kind == "anonymous" and not getattr(request.state, "auth_required", False):
        return OPERATOR
    return found
