"""Training the complexity classifier: logistic regression on standardised features, a softmax
temperature fitted on out-of-fold predictions (calibration), cross-validated accuracy and a
confusion matrix. scikit-learn does the fitting; inference is ``router.classifier``."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.classifier import CLASSES, ComplexityClassifier

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(4.0), 41))


def _nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def _full_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Decision values for all three classes (a class absent from training gets -inf-like logits)."""
    raw = model.decision_function(x)
    if raw.ndim == 1:  # two classes: sklearn returns one column
        raw = np.stack([-raw / 2, raw / 2], axis=1)
    out = np.full((len(x), len(CLASSES)), -30.0)
    for col, cls in enumerate(model.classes_):
        out[:, int(cls)] = raw[:, col]
    return out


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (a constant guess scores 1/k)."""
    recalls = [float((y_pred[y_true == k] == k).mean()) for k in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else 0.0


def fit(
    x: np.ndarray,
    labels: list[str],
    *,
    seed: int = 0,
    c: float = 0.1,
    class_weight: str | None = None,
    hops: list[int | None] | None = None,
) -> tuple[ComplexityClassifier, dict[str, Any]]:
    """``class_weight="balanced"`` weighs each class inversely to its count (the ladder's labels are
    mostly A: BoolQ's yes/no is answered right by chance); with ``hops``, the out-of-fold predictions
    are also scored one- vs multi-hop (class C predicts multi-hop)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray([CLASSES.index(label) for label in labels])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    xs = (x - mean) / scale
    counts = np.bincount(y, minlength=len(CLASSES))
    present = counts[counts > 0]
    folds = int(min(5, present.min())) if len(present) > 1 else 0
    metrics: dict[str, Any] = {
        "n": int(len(y)),
        "label_counts": dict(zip(CLASSES, counts.tolist(), strict=True)),
        "c": c,
        "class_weight": class_weight,
        "seed": seed,
    }
    temperature = 1.0
    if folds >= 2:
        oof = np.zeros((len(y), len(CLASSES)))
        for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(xs, y):
            model = LogisticRegression(C=c, max_iter=5000, class_weight=class_weight).fit(xs[train_idx], y[train_idx])
            oof[test_idx] = _full_logits(model, xs[test_idx])
        temperature = float(min(TEMPERATURES, key=lambda t: _nll(oof, y, float(t))))
        pred = oof.argmax(axis=1)
        confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
        for t_, p_ in zip(y, pred, strict=True):
            confusion[t_, p_] += 1
        probs_raw, probs_cal = _softmax(oof), _softmax(oof / temperature)
        majority = counts.max() / counts.sum()
        metrics.update(
            {
                "cv_folds": folds,
                "cv_accuracy": round(float((pred == y).mean()), 4),
                "cv_balanced_accuracy": round(balanced_accuracy(y, pred), 4),
                "majority_baseline": round(float(majority), 4),
                "confusion_matrix": {"rows_true_cols_pred": list(CLASSES), "counts": confusion.tolist()},
                "temperature": round(temperature, 4),
                "ece_before_temperature": round(expected_calibration_error(probs_raw, y), 4),
                "ece_after_temperature": round(expected_calibration_error(probs_cal, y), 4),
                "nll_before_temperature": round(_nll(oof, y, 1.0), 4),
                "nll_after_temperature": round(_nll(oof, y, temperature), 4),
            }
        )
        if hops is not None:
            multi = np.asarray([(h or 1) >= 2 for h in hops])
            predicted_multi = pred == CLASSES.index("C")
            metrics["cv_hops"] = {
                "balanced_accuracy": round(balanced_accuracy(multi, predicted_multi), 4),
                "accuracy": round(float((multi == predicted_multi).mean()), 4),
                "majority_baseline": round(float(max(multi.mean(), 1 - multi.mean())), 4),
                "multi_hop": int(multi.sum()),
                "one_hop": int((~multi).sum()),
            }
    model = LogisticRegression(C=c, max_iter=5000, class_weight=class_weight).fit(xs, y)
    coef = np.zeros((len(CLASSES), x.shape[1]))
    intercept = np.full(len(CLASSES), -30.0)
    if len(model.classes_) == 2:
        # sklearn keeps one weight row for two classes: split it symmetrically.
        a, b = (int(v) for v in model.classes_)
        coef[a], coef[b] = -model.coef_[0] / 2, model.coef_[0] / 2
        intercept[a], intercept[b] = -model.intercept_[0] / 2, model.intercept_[0] / 2
    else:
        for row, cls in enumerate(model.classes_):
            coef[int(cls)] = model.coef_[row]
            intercept[int(cls)] = model.intercept_[row]
    clf = ComplexityClassifier(mean, scale, coef, intercept, temperature, CLASSES, {"metrics": metrics})
    return clf, metrics
