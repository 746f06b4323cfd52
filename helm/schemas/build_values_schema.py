"""Build the chart's ``values.schema.json``.

The chart's own keys are described below; ``app.config`` and ``sla.policy`` take the JSON schemas of the
pydantic models the app validates them with (``services.config.AppConfig``, ``router.sla.SlaPolicy``), so
`helm install` rejects what the app would reject at start, with the path of the offending key, and the two
cannot drift apart (tests/deploy checks the committed file is this script's output). Cross-references
(a tenant's tier must exist, ...) are checked by the chart's templates (`ragyard.validate`).

Run ``python helm/schemas/build_values_schema.py`` after changing either model or the chart's values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "ragyard" / "values.schema.json"


def _portable(node: Any, prefix: str) -> Any:
    """Drop defaults and titles (defaults may hold this machine's paths) and namespace the $refs."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("default", "title"):
                continue
            if key == "$ref" and isinstance(value, str):
                out[key] = "#/$defs/" + prefix + value.rsplit("/", 1)[-1]
            else:
                out[key] = _portable(value, prefix)
        return out
    if isinstance(node, list):
        return [_portable(item, prefix) for item in node]
    return node


def _model_schema(model: Any, prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema()
    for name, sub in schema.pop("$defs", {}).items():
        defs[prefix + name] = _portable(sub, prefix)
    defs[prefix + model.__name__] = _portable(schema, prefix)
    return {"$ref": f"#/$defs/{prefix}{model.__name__}"}


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False, **extra}
    if required:
        out["required"] = required
    return out


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT = {"type": "integer"}
QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9.]+([eE][0-9]+|[KMGTPE]i?|m)?$"}, {"type": "number"}]}
ANY_OBJ = {"type": "object"}
LIST = {"type": "array"}
RESOURCES = obj(
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    }
)
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROBE_TIMING = obj(
    {
        "initialDelaySeconds": {"type": "integer", "minimum": 0},
        "periodSeconds": {"type": "integer", "minimum": 1},
        "timeoutSeconds": {"type": "integer", "minimum": 1},
        "failureThreshold": {"type": "integer", "minimum": 1},
        "successThreshold": {"type": "integer", "minimum": 1},
    }
)
AUTOSCALING = obj(
    {
        "min_replicas": {"type": "integer", "minimum": 0},
        "max_replicas": {"type": "integer", "minimum": 1},
        "initial_replicas": {"type": "integer", "minimum": 0},
        "target_ongoing_requests": {"type": "number", "exclusiveMinimum": 0},
        "upscale_delay_s": {"type": "number", "minimum": 0},
        "downscale_delay_s": {"type": "number", "minimum": 0},
        "metrics_interval_s": {"type": "number", "exclusiveMinimum": 0},
        "look_back_period_s": {"type": "number", "exclusiveMinimum": 0},
    },
    ["min_replicas", "max_replicas"],
)


def _group(gpu: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "enabled": BOOL,
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "rayStartParams": STR_MAP,
        "resources": RESOURCES,
        "nodeSelector": STR_MAP,
        "tolerations": LIST,
        "affinity": ANY_OBJ,
    }
    if gpu:
        props["gpusPerPod"] = {"type": "integer", "minimum": 1}
    return obj(props, ["enabled", "replicas", "minReplicas", "maxReplicas", "resources"])


def build() -> dict[str, Any]:
    from router.sla import SlaPolicy
    from services.config import AppConfig

    defs: dict[str, Any] = {}
    app_config = _model_schema(AppConfig, "app.", defs)
    sla_policy = _model_schema(SlaPolicy, "sla.", defs)
    image = obj(
        {
            "repository": {"type": "string", "minLength": 1},
            "tag": STR,
            "gpuTag": STR,
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        ["repository"],
    )
    values = obj(
        {
            "nameOverride": STR,
            "fullnameOverride": STR,
            "image": image,
            "imagePullSecrets": LIST,
            "rayVersion": {"type": "string", "pattern": r"^2\.[0-9]+\.[0-9]+$"},
            "serviceAccount": obj({"create": BOOL, "name": STR, "annotations": STR_MAP}),
            "podSecurityContext": ANY_OBJ,
            "containerSecurityContext": ANY_OBJ,
            "extraEnv": LIST,
            "extraVolumes": LIST,
            "extraVolumeMounts": LIST,
            "app": obj(
                {
                    "config": app_config,
                    "autoscaling": obj(
                        {
                            "gateway": AUTOSCALING,
                            "router": AUTOSCALING,
                            "retriever": AUTOSCALING,
                            "workers": AUTOSCALING,
                        },
                        ["gateway", "router", "retriever", "workers"],
                    ),
                    "workerAutoscaling": {"type": "object", "additionalProperties": AUTOSCALING},
                },
                ["config", "autoscaling"],
            ),
            "sla": obj(
                {"enabled": BOOL, "reloadIntervalS": {"type": "number", "exclusiveMinimum": 0}, "policy": sla_policy},
                ["enabled", "policy"],
            ),
            "apiKeys": obj(
                {"existingSecret": STR, "keys": {"type": "array", "items": {"type": "string", "minLength": 8}}}
            ),
            "redis": obj(
                {
                    "enabled": BOOL,
                    "image": image,
                    "auth": obj({"enabled": BOOL, "existingSecret": STR}),
                    "persistence": obj({"size": QUANTITY, "storageClass": STR}, ["size"]),
                    "resources": RESOURCES,
                    "url": {"type": "string", "pattern": r"^(rediss?://.+)?$"},
                    "existingSecret": STR,
                },
                ["enabled"],
            ),
            "head": obj(
                {
                    "rayStartParams": STR_MAP,
                    "resources": RESOURCES,
                    "probes": obj({"startupProbe": ANY_OBJ, "livenessProbe": ANY_OBJ, "readinessProbe": ANY_OBJ}),
                    "nodeSelector": STR_MAP,
                    "tolerations": LIST,
                    "affinity": ANY_OBJ,
                }
            ),
            "workerGroups": obj({"cpu": _group(False), "gpu": _group(True)}, ["cpu", "gpu"]),
            "probes": obj(
                {"startup": PROBE_TIMING, "liveness": PROBE_TIMING, "readiness": PROBE_TIMING},
                ["startup", "liveness", "readiness"],
            ),
            "sharedMemory": QUANTITY,
            "index": obj(
                {
                    "persistence": obj(
                        {
                            "enabled": BOOL,
                            "accessMode": {"enum": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]},
                            "size": QUANTITY,
                            "storageClassName": STR,
                            "existingClaim": STR,
                        },
                        ["enabled", "accessMode", "size"],
                    ),
                    "sizeLimit": QUANTITY,
                    "lockTimeoutSeconds": {"type": "integer", "minimum": 0},
                },
                ["persistence"],
            ),
            "metrics": obj(
                {
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "podMonitor": obj({"enabled": BOOL, "interval": STR, "labels": STR_MAP}, ["enabled"]),
                },
                ["port", "podMonitor"],
            ),
            "rayAutoscaler": obj(
                {
                    "enabled": BOOL,
                    "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                    "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                }
            ),
            "service": obj(
                {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "annotations": STR_MAP,
                },
                ["type", "port"],
            ),
            "ingress": obj(
                {
                    "enabled": BOOL,
                    "className": STR,
                    "annotations": STR_MAP,
                    "hosts": {
                        "type": "array",
                        "items": obj(
                            {
                                "host": STR,
                                "paths": {
                                    "type": "array",
                                    "items": obj(
                                        {
                                            "path": STR,
                                            "pathType": {"enum": ["Exact", "Prefix", "ImplementationSpecific"]},
                                        },
                                        ["path", "pathType"],
                                    ),
                                },
                            },
                            ["host", "paths"],
                        ),
                    },
                    "tls": LIST,
                }
            ),
        },
        ["image", "rayVersion", "app", "sla", "redis", "workerGroups", "service"],
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Ragyard chart values (generated by helm/schemas/build_values_schema.py)",
        **values,
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
