"""`router.quality_per_second` replayed on the training questions the quality table was built from: each
question's plan under each rate (and under the older margin rule), scored with the ladder's own run of the
(model, policy) it names (`router/artifacts/ladder/runs.jsonl`, full-matrix runs). Run from the repository root:

    .venv/bin/python results/policies-gain/rate_replay.py questions > /tmp/ladder_q.jsonl
    for r in 0 0.002 0.005 0.01 0.02 null; do printf "router: {quality_per_second: $r}\\n" > /tmp/rate-$r.yaml
        .venv/bin/ragyard --config /tmp/rate-$r.yaml plan --data /tmp/ladder_q.jsonl --out /tmp/lplan-$r; done
    .venv/bin/python results/policies-gain/rate_replay.py score /tmp/lplan- > results/policies-gain/rate_replay.txt

Questions that never ran `multi` (286 of 339) score a `multi` plan as `single`'s F1 at `multi`'s mean latency.
"""

import collections
import json
import statistics
import sys
from pathlib import Path

RATES = ("0", "0.002", "0.005", "0.01", "0.02", "null")
ROOT = Path(__file__).resolve().parents[2]
runs = [json.loads(line) for line in (ROOT / "router/artifacts/ladder/runs.jsonl").read_text().splitlines()]
full = [r for r in runs if r.get("mode", "full") != "cascade"]
by: dict[str, dict[tuple[str, str], dict]] = collections.defaultdict(dict)
for r in full:
    by[f"{r['file']}::{r['id']}"][(r["model"], r["policy"])] = r

if sys.argv[1] == "questions":
    for key, pairs in by.items():
        if len(pairs) >= 4:
            print(json.dumps({"id": key, "question": next(iter(pairs.values()))["question"]}))  # noqa: T201
    sys.exit(0)

prefix = sys.argv[2]
qwen = "qwen2.5-coder-0.5b-instruct"
multi_s = statistics.fmean(r["latency_s"] for r in full if r["policy"] == "multi" and r["model"] == qwen)
for subset in ("53 with multi", "all 339"):
    ids = [k for k, v in by.items() if (len(v) == 6 if subset.startswith("53") else len(v) >= 4)]
    fixed = {
        p: (statistics.fmean(by[k][p]["f1"] for k in ids), statistics.fmean(by[k][p]["latency_s"] for k in ids))
        for p in by[ids[0]]
        if all(p in by[k] for k in ids)
    }
    best = max(fixed, key=lambda p: fixed[p][0])
    print(subset, "best fixed", best, [round(x, 3) for x in fixed[best]])  # noqa: T201
    for rate in RATES:
        lines = Path(f"{prefix}{rate}/plans.jsonl").read_text().splitlines()
        plans = {(r := json.loads(line))["id"]: (r["model"], r["policy"]) for line in lines}
        f1, seconds, used = [], [], collections.Counter()
        for k in ids:
            p = plans[k]
            used[p[0][:4] + "/" + p[1]] += 1
            if p in by[k]:
                f1.append(by[k][p]["f1"])
                seconds.append(by[k][p]["latency_s"])
            else:
                f1.append(by[k][(p[0], "single")]["f1"])
                seconds.append(multi_s)
        f, t = statistics.fmean(f1), statistics.fmean(seconds)
        print(  # noqa: T201
            f"  rate {rate}: F1 {f:.3f} ({f / fixed[best][0]:.0%}) "
            f"time {t:.2f} s ({t / fixed[best][1]:.0%}) {dict(used)}"
        )
