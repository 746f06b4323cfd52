"""Feature variants of the complexity classifier left out dataset by dataset (README: "Does the router carry over
to a dataset it never saw?"), run from the repository root: `.venv/bin/python results/router-lodo/features_exp.py`.
The rows are `ragyard bench router --leave-one-out`'s; each variant prints each left-out dataset's recall, the
worst and the pooled balanced accuracy. `dsw`: every training dataset weighted equally."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from bench.router_lodo import lodo_rows
from retrieval.embedder import Embedder
from router.features import lexical_features
from router.training import balanced_accuracy

rows = lodo_rows(Path(__file__).resolve().parents[2] / "router/artifacts/labels.jsonl", 400)
emb = Embedder()
vec = emb.encode([r["question"] for r in rows])
REL = {"who", "which", "that", "whose", "whom", "where", "when"}


def struct(q):
    w = re.findall(r"[A-Za-z0-9']+", q)
    lw = [x.lower() for x in w]
    n = max(1, len(w))
    caps_spans = len(re.findall(r"(?:(?<=\s)|^)(?:[A-Z][\w'-]*)(?:\s+(?:of|the|de|and)?\s*[A-Z][\w'-]*)*", q))
    rel_mid = sum(1 for i, x in enumerate(lw) if i > 1 and x in REL)
    of_the = len(re.findall(r"\b(of|in|by|for) the\b", q.lower()))
    poss = q.count("'s")
    years = len(re.findall(r"\b1[0-9]{3}\b|\b20[0-9]{2}\b", q))
    return np.array(
        [np.log1p(n), caps_spans, rel_mid, of_the, poss, years, float(lw[0] in REL | {"what", "how"} if lw else 0)],
        dtype=float,
    )


st = np.stack([struct(r["question"]) for r in rows])
lex = np.stack([lexical_features(r["question"]) for r in rows])
ds = np.array([r["dataset"] for r in rows])
y = np.array([r["label"] for r in rows])
multi = np.array([(r["hops"] or 1) >= 2 for r in rows])
ybin = np.where(multi, "C", "AB")


def run(x, label, c=0.1, target=y):
    per = {}
    pred = np.zeros(len(rows), bool)
    for d in sorted(set(ds)):
        tr, te = ds != d, ds == d
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        # weight each dataset equally in training
        w = np.ones(tr.sum())
        dtr = ds[tr]
        for dd in set(dtr):
            w[dtr == dd] = 1.0 / (dtr == dd).sum()
        m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(
            (x[tr] - mu) / sd, target[tr], sample_weight=w * len(w)
        )
        g = m.predict((x[te] - mu) / sd) == "C"
        pred[te] = g
        per[d] = round(float((g == multi[te]).mean()), 2)
    print(label, c, per, "min", min(per.values()), "pooled", round(balanced_accuracy(multi, pred), 3))  # noqa: T201


for c in (0.01, 0.1):
    run(np.hstack([lex, st]), "lex+struct", c)
    run(np.hstack([lex, st]), "lex+struct bin", c, ybin)
    run(np.hstack([vec, lex]), "shipped features dsw", c)
    run(lex, "lexical dsw", c)
    run(vec, "embedding dsw", c)
    run(np.hstack([vec, lex, st]), "emb+lex+struct dsw", c, ybin)
    p = PCA(16, random_state=0).fit_transform(vec)
    run(np.hstack([p, lex, st]), "pca16+lex+struct", c, ybin)
