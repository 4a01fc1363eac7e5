"""Benchmark: staggered requests against `unleak serve`, continuous batching vs batch by batch.

The embedded default model with guidance (g = 3, probability space) behind
the server's policy. `--requests` streaming requests arrive one every
`--interval` seconds (a fixed schedule, the same for both runs); every
`--long-every`-th asks for `--long-tokens` greedy tokens, the others for
`--short-tokens`. Run twice in one process, side by side: requests that
arrive while a batch decodes join it between steps (`continuous`), then wait
for it to end (`batch_by_batch`, the server before continuous batching). Per
request: time to first token and latency from its arrival. Last line JSON:
p50 / p95 of both for each mode, and `short_p50_speedup` (the short requests'
median latency batch by batch / continuous).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import openai

from unleak.serve.app import build_server_generator, create_app
from unleak.serve.background import live_server
from unleak.serve.policies import policies_from_dict

POLICIES = {"policies": {"public": {"guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 1024}},
            "keys": {"sk-bench": "public"}}
TOPICS = ["moving to a new city", "a job interview", "a healthy breakfast", "saving for a house",
          "a birthday party", "learning Spanish", "a road trip", "a noisy neighbour"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def staggered(url: str, args: argparse.Namespace) -> dict:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-bench", max_retries=0, timeout=3600) as c:

        async def one(i: int) -> tuple[bool, float, float]:
            await asyncio.sleep(i * args.interval)
            long = i % args.long_every == 0
            arrived = time.perf_counter()
            first = None
            stream = await c.chat.completions.create(
                model="default", stream=True, max_tokens=args.long_tokens if long else args.short_tokens,
                messages=[{"role": "user", "content": f"Give me two tips about {TOPICS[i % len(TOPICS)]}."}])
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
            done = time.perf_counter()
            return long, (first or done) - arrived, done - arrived

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(args.requests)))
        wall = time.perf_counter() - start
    short = [lat for long, _, lat in results if not long]
    return {"wall_s": round(wall, 2),
            "ttft_p50_s": percentile([t for _, t, _ in results], 0.5),
            "ttft_p95_s": percentile([t for _, t, _ in results], 0.95),
            "latency_p50_s": percentile([lat for _, _, lat in results], 0.5),
            "latency_p95_s": percentile([lat for _, _, lat in results], 0.95),
            "short_latency_p50_s": round(statistics.median(short), 2),
            "long_latency_mean_s": round(statistics.mean(lat for long, _, lat in results if long), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--long-every", type=int, default=4)
    ap.add_argument("--long-tokens", type=int, default=96)
    ap.add_argument("--short-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args()
    generator = build_server_generator("default", {}, max_batch=args.max_batch)
    generator.eos_ids = set()  # every request decodes exactly its max_tokens
    policies = policies_from_dict(POLICIES)
    out = {}
    for label, continuous in (("continuous", True), ("batch_by_batch", False)):
        app = create_app(generator, policies, model_name="default", max_batch=args.max_batch,
                         max_queue=args.requests, continuous=continuous)
        with live_server(app) as url:
            asyncio.run(staggered(url, argparse.Namespace(**{**vars(args), "requests": 2})))  # warm-up
            joined = app.state.batcher.joined
            out[label] = asyncio.run(staggered(url, args))
            out[label]["joined"] = app.state.batcher.joined - joined
        print(label, out[label])
    print(json.dumps({"bench": "continuous_batching", **vars(args), **out,
                      "short_p50_speedup": round(out["batch_by_batch"]["short_latency_p50_s"]
                                                 / out["continuous"]["short_latency_p50_s"], 2)}))


if __name__ == "__main__":
    main()
