"""Benchmark: what the served output filter (`redact_output: strict`) costs, side by side with the same policy
unfiltered.

The embedded default model with guidance (g = 3, probability space), 32
streaming clients fired together (`bench_serve.load`), batched, through two
policies of one server that differ only in the filter, alternating
(plain, filtered, plain, filtered, ...) so the machine's drift hits both. Last
line JSON: each policy's runs, the medians, `filter_cost` (the filtered
policy's median latency over the plain one's) and the spans the filter
replaced (from `/metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

import httpx
from bench_serve import load  # benchmarks/ is the script's directory

from unleak.serve.app import build_server_generator, create_app
from unleak.serve.background import live_server
from unleak.serve.policies import policies_from_dict

POLICIES = {"policies": {"plain": {"guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 256},
                         "filtered": {"guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 256,
                                      "redact_output": "strict"}},
            "keys": {"sk-plain": "plain", "sk-filtered": "filtered"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    generator = build_server_generator("default", {}, max_batch=args.clients)
    generator.eos_ids = set()  # every request decodes exactly max_tokens
    app = create_app(generator, policies_from_dict(POLICIES), model_name="default", max_batch=args.clients,
                     max_queue=args.clients)
    runs: dict[str, list[dict]] = {"plain": [], "filtered": []}
    with live_server(app) as url:
        asyncio.run(load(url, 4, 4, key="sk-filtered"))  # warm-up: the detector's first call loads its pipes
        for _ in range(args.rounds):
            for policy in ("plain", "filtered"):
                runs[policy].append(asyncio.run(load(url, args.clients, args.max_tokens, key=f"sk-{policy}")))
                print(policy, runs[policy][-1])
        metrics = httpx.get(f"{url}/metrics").text
    spans = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("unleak_redacted_spans_total{"))
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("requests_per_s", "p50_s", "first_text_p50_s")}
           for p, rs in runs.items()}
    print(json.dumps({"bench": "redaction", "clients": args.clients, "max_tokens": args.max_tokens, "runs": runs,
                      "median": med, "filter_cost": round(med["filtered"]["p50_s"] / med["plain"]["p50_s"], 3),
                      "redacted_spans": spans}))


if __name__ == "__main__":
    main()
