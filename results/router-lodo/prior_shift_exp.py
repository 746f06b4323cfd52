"""Do class priors that follow a new set's evidence fix the router's class-C share on a dataset it never saw?
Run from the repository root: `.venv/bin/python results/router-lodo/prior_shift_exp.py`. For each dataset left
out (the rows and recipe of `ragyard bench router --leave-one-out`), the classifier fitted on the others gives
its posteriors; EM (Saerens, Latinne & Decaestecker 2002) re-estimates the class priors from those posteriors
alone (no labels) and re-weights them. Printed: the class-C share and recall before and after, per dataset, and on
mixtures of a multi-hop set with a single-hop one (real traffic is mixed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np

from bench.router_lodo import lodo_rows
from retrieval.embedder import Embedder
from router.classifier import ComplexityClassifier
from router.features import feature_vector
from router.training import balanced_accuracy, fit

ROOT = Path(__file__).resolve().parents[2]
C_REG = float(ComplexityClassifier.load(ROOT / "router/artifacts/complexity-v1.npz").header["metrics"]["c"])
rows = lodo_rows(ROOT / "router/artifacts/labels.jsonl", 400)
vec = Embedder().encode([r["question"] for r in rows])
x = np.stack([feature_vector(v, r["question"]) for v, r in zip(vec, rows, strict=True)])
ds = np.array([r["dataset"] for r in rows])
y = [r["label"] for r in rows]
multi = np.array([(r["hops"] or 1) >= 2 for r in rows])


def em(post, prior, iters=200, tol=1e-8):
    new = prior.copy()
    for _ in range(iters):
        w = post * (new / prior)
        w /= w.sum(1, keepdims=True)
        nxt = w.mean(0)
        if np.abs(nxt - new).max() < tol:
            new = nxt
            break
        new = nxt
    w = post * (new / prior)
    return new, w / w.sum(1, keepdims=True)


posts, train_priors = {}, {}
for d in sorted(set(ds)):
    tr, te = ds != d, ds == d
    clf, _ = fit(x[tr], [v for v, k in zip(y, tr, strict=True) if k], seed=0, c=C_REG, class_weight="balanced")
    posts[d] = clf.predict_proba(x[te])
    train_priors[d] = clf.predict_proba(x[tr]).mean(0)  # the classifier's own prior on what it was fitted on
C = 2
print("dataset | multi-hop | C share before | after | recall before | after | prior C: train -> new")  # noqa: T201
for d in sorted(posts):
    p, prior = posts[d], train_priors[d]
    new, adj = em(p, prior)
    t = multi[ds == d]
    before, after = p.argmax(1) == C, adj.argmax(1) == C
    print(  # noqa: T201
        f"{d} | {t.mean():.2f} | {before.mean():.3f} | {after.mean():.3f} | {(before == t).mean():.3f} | "
        f"{(after == t).mean():.3f} | {prior[C]:.3f} -> {new[C]:.3f}"
    )
print("\nmixtures (multi-hop set + single-hop set, equal counts; each row's own left-out model):")  # noqa: T201
rng = np.random.default_rng(0)
for m in ("hotpotqa", "fanoutqa"):
    for s in ("nq", "triviaqa", "squad", "boolq", "disflqa", "webquestions"):
        n = min(len(posts[m]), len(posts[s]))
        pm, ps = posts[m][rng.permutation(len(posts[m]))[:n]], posts[s][rng.permutation(len(posts[s]))[:n]]
        p = np.vstack([pm, ps])
        t = np.r_[np.ones(n, bool), np.zeros(n, bool)]
        prior = (train_priors[m] + train_priors[s]) / 2
        new, adj = em(p, prior)
        b, a = p.argmax(1) == C, adj.argmax(1) == C
        print(  # noqa: T201
            f"{m}+{s} | multi 0.50 | C share {b.mean():.3f} -> {a.mean():.3f} | "
            f"balanced acc {balanced_accuracy(t, b):.3f} -> {balanced_accuracy(t, a):.3f}"
        )
