"""The Adaptive-RAG complexity classifier (arXiv 2403.14403): A = answer without retrieval,
B = single-step retrieval, C = multi-step retrieval.

Inference is a standardised linear model with a softmax and a fitted temperature, in numpy: well
under a millisecond. Training (scikit-learn) lives in ``router.training``. The artifact is one
``.npz`` with the weights and a JSON header (version, classes, feature layout, metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import RouterArtifactError
from router.features import LEXICAL_NAMES, feature_vector

CLASSES: tuple[str, ...] = ("A", "B", "C")
ARTIFACT_FORMAT = 1


@dataclass
class ComplexityClassifier:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    temperature: float = 1.0
    classes: tuple[str, ...] = CLASSES
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x2 = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x2.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {x2.shape[1]}")
        logits = ((x2 - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits = logits / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return np.asarray(p / p.sum(axis=1, keepdims=True))

    def classify(self, embedding: np.ndarray, question: str) -> tuple[str, dict[str, float]]:
        probs = self.predict_proba(feature_vector(embedding, question))[0]
        label = self.classes[int(np.argmax(probs))]
        return label, {c: round(float(p), 4) for c, p in zip(self.classes, probs, strict=True)}

    # -- artifact ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            **self.header,
            "format": ARTIFACT_FORMAT,
            "classes": list(self.classes),
            "lexical_features": list(LEXICAL_NAMES),
            "temperature": self.temperature,
        }
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=self.intercept,
            header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_dim: int | None = None) -> ComplexityClassifier:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data["header"]).decode("utf-8"))
                arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "coef", "intercept")}
        except FileNotFoundError as exc:
            raise RouterArtifactError(
                f"router artifact {path} does not exist; train one with `ragyard train-router`"
            ) from exc
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise RouterArtifactError(f"router artifact {path} is unreadable: {exc}") from exc
        if header.get("format") != ARTIFACT_FORMAT:
            raise RouterArtifactError(
                f"router artifact {path} has format {header.get('format')}, expected {ARTIFACT_FORMAT}"
            )
        classes = tuple(header.get("classes", ()))
        coef = arrays["coef"]
        n = coef.shape[1] if coef.ndim == 2 else -1
        if (
            classes != CLASSES
            or coef.shape[0] != len(CLASSES)
            or arrays["mean"].shape != (n,)
            or arrays["scale"].shape != (n,)
            or arrays["intercept"].shape != (len(CLASSES),)
        ):
            raise RouterArtifactError(f"router artifact {path} has inconsistent shapes")
        if tuple(header.get("lexical_features", ())) != LEXICAL_NAMES:
            raise RouterArtifactError(f"router artifact {path} was trained on other lexical features; retrain it")
        if expected_dim is not None and n != expected_dim + len(LEXICAL_NAMES):
            raise RouterArtifactError(
                f"router artifact {path} expects {n - len(LEXICAL_NAMES)}-d embeddings; "
                f"the embedder gives {expected_dim}"
            )
        if not np.all(np.isfinite(coef)) or np.any(arrays["scale"] <= 0):
            raise RouterArtifactError(f"router artifact {path} holds invalid weights")
        return cls(
            arrays["mean"],
            arrays["scale"],
            coef,
            arrays["intercept"],
            float(header.get("temperature", 1.0)),
            CLASSES,
            header,
        )
