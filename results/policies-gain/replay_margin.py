"""What `auto/adaptive` would have scored in this run under the older routing rule (the cheapest pair within
`router.quality_margin` of the best expected quality) instead of gain per second: each question's plan under that
rule (`ragyard --config CONFIG plan`, CONFIG holding `router: {quality_per_second: null}`) replayed on the fixed
setup answers of the same run. Run from the repository root after `bench policies --out results/policies-gain`:

    printf 'router: {quality_per_second: null}\\n' > /tmp/margin.yaml
    for f in hotpotqa boolq; do .venv/bin/ragyard --config /tmp/margin.yaml plan \\
        --data ../shared/data/dev_$f.jsonl --out /tmp/margin-$f; done
    .venv/bin/python results/policies-gain/replay_margin.py /tmp/margin-hotpotqa /tmp/margin-boolq
"""

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
preds = [json.loads(line) for line in (HERE / "predictions.jsonl").read_text().splitlines()]
by = {(p["setup"], p["id"]): p for p in preds}
plans = {}
for d in sys.argv[1:]:
    for line in (Path(d) / "plans.jsonl").read_text().splitlines():
        r = json.loads(line)
        plans[r["id"]] = (r["model"], r["policy"])
auto = [p for p in preds if p["setup"] == "auto/adaptive"]
replayed = [by[(f"{plans[p['id']][0]}/{plans[p['id']][1]}", p["id"])] for p in auto]


def chosen(r):
    plan = r["plan"]
    policy = (plan.get("complexity") or {}).get("policy") or plan["policy"]
    return f"{plan['model']}/{policy}"


for name, rows in (("auto/adaptive (gain per second, run)", auto), ("auto/adaptive (margin, replayed)", replayed)):
    for corpus in ("hotpot", "boolq", ""):
        part = [r for r in rows if r["id"].startswith(corpus)]
        f1 = statistics.fmean(r["f1"] for r in part)
        s = statistics.fmean(r["latency_s"] for r in part)
        plans_used = dict(Counter(chosen(r) for r in part))
        print(f"{name} {corpus or 'both'}: F1 {f1:.3f}, mean {s:.2f} s, n {len(part)}, plans {plans_used}")  # noqa: T201
