from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.classifier import ComplexityClassifier
from router.errors import RouterArtifactError
from router.features import LEXICAL_NAMES, feature_vector, lexical_features
from router.routing import ConfigRouter
from router.training import expected_calibration_error, fit
from services.config import load_config

pytestmark = pytest.mark.unit

DIM = 8


def _data(n: int = 90, seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Three separable clusters in the embedding part; questions whose wording matches the class."""
    rng = np.random.default_rng(seed)
    centers = {"A": np.eye(DIM)[0] * 3, "B": np.eye(DIM)[1] * 3, "C": np.eye(DIM)[2] * 3}
    questions = {
        "A": "What is two plus two?",
        "B": "Who wrote Hamlet?",
        "C": "Were Scott Derrickson and Ed Wood of the same nationality?",
    }
    labels = [("A", "B", "C")[i % 3] for i in range(n)]
    emb = np.stack([centers[lbl] + rng.normal(0, 0.7, DIM) for lbl in labels])
    qs = [questions[lbl] for lbl in labels]
    x = np.stack([feature_vector(e, q) for e, q in zip(emb, qs, strict=True)])
    return x, labels, qs


def test_lexical_features_fixed_layout() -> None:
    f = lexical_features("Were Scott Derrickson and Ed Wood of the same nationality?")
    assert f.shape == (len(LEXICAL_NAMES),)
    named = dict(zip(LEXICAL_NAMES, f.tolist(), strict=True))
    assert named["starts_aux"] == 1.0 and named["compare_words"] >= 1 and named["and_count"] == 1


def test_fit_cross_validates_and_calibrates() -> None:
    x, labels, _ = _data()
    clf, metrics = fit(x, labels, seed=0)
    assert metrics["cv_accuracy"] >= 0.9 and metrics["cv_folds"] == 5
    counts = np.asarray(metrics["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == len(labels)
    assert metrics["temperature"] > 0
    probs = clf.predict_proba(x)
    assert np.allclose(probs.sum(axis=1), 1.0)
    y = np.asarray([("A", "B", "C").index(lbl) for lbl in labels])
    assert expected_calibration_error(probs, y) < 0.2


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, labels, _ = _data()
    clf, _ = fit(x, labels)
    clf.header["version"] = "test-v1"
    path = clf.save(tmp_path / "router.npz")
    back = ComplexityClassifier.load(path, expected_dim=DIM)
    assert back.header["version"] == "test-v1"
    assert np.allclose(back.predict_proba(x), clf.predict_proba(x))
    with pytest.raises(RouterArtifactError, match="expects 8-d embeddings"):
        ComplexityClassifier.load(path, expected_dim=384)


def test_missing_or_corrupt_artifact(tmp_path: Path) -> None:
    with pytest.raises(RouterArtifactError, match="train one with"):
        ComplexityClassifier.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(RouterArtifactError, match="unreadable"):
        ComplexityClassifier.load(bad)


def test_two_classes_only_still_gives_three_probabilities() -> None:
    x, labels, _ = _data()
    keep = [i for i, lbl in enumerate(labels) if lbl != "A"]
    clf, _ = fit(x[keep], [labels[i] for i in keep])
    probs = clf.predict_proba(x[:3])
    assert probs.shape == (3, 3) and np.all(probs[:, 0] < 1e-6)


def test_router_adaptive_uses_the_class(tmp_path: Path) -> None:
    x, labels, qs = _data()
    clf, _ = fit(x, labels)
    # Without a quality table the class maps to its policy (with one, the table decides: test_quality.py).
    config = load_config({"router": {"multi_hop_policy": "dragin", "quality_table": None}})
    router = ConfigRouter(config, classifier=clf)
    emb_c = np.eye(DIM)[2] * 3
    d = router.route(qs[2], policy="adaptive", embedding=emb_c)
    assert d.plan.policy == "adaptive" and d.plan.complexity is not None
    assert d.plan.complexity.cls == "C" and d.plan.complexity.policy == "dragin"
    assert set(d.plan.complexity.probabilities or {}) == {"A", "B", "C"}
    assert "class C" in d.reason
    d = router.route(qs[0], policy="adaptive", embedding=np.eye(DIM)[0] * 3)
    assert d.plan.complexity is not None and d.plan.complexity.policy == "none"


def test_router_without_artifact_falls_back(tmp_path: Path) -> None:
    router = ConfigRouter(load_config({"router": {"artifact": str(tmp_path / "missing.npz")}}))
    assert router.classifier is None and "does not exist" in (router.classifier_error or "")
    assert not router.needs_embedding("adaptive")
    d = router.route("q", policy="adaptive")
    assert d.plan.complexity is not None
    assert d.plan.complexity.model_dump() == {"class": None, "policy": "single", "fallback": d.plan.complexity.fallback}
    assert "router.fallback_policy" in d.reason


def test_shipped_artifact_loads_with_its_metrics() -> None:
    config = load_config({})
    assert config.router.artifact is not None
    clf = ComplexityClassifier.load(config.router.artifact, expected_dim=384)
    assert clf.header["version"] == "complexity-v1"
    metrics = clf.header["metrics"]
    assert metrics["n"] == sum(metrics["label_counts"].values()) and "cv_accuracy" in metrics
    # Trained on the ladder's labels: the training halves of the shared dev files among its sources.
    assert {"dev_hotpotqa.jsonl", "dev_boolq.jsonl", "train_boolq.jsonl"} <= set(metrics["files"])
    assert metrics["n"] >= 1000 and "cv_hops" in metrics and metrics["train_fraction"] == 0.5
