"""Benchmark: 32 concurrent streaming clients against `unleak serve` on loopback, batched vs one at a time.

The embedded default model with guidance (g = 3, probability space) behind
the server's policy, 32 `openai.AsyncOpenAI` streaming requests of
`--max-tokens` greedy tokens fired together, twice in one run: the server
batching up to 32 requests, then the same server decoding one request at a
time (max_batch = 1). Last line JSON: requests/s, p50/p95 latency, errors and
the `batched_speedup` (requests/s batched / one at a time).
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

POLICIES = {"policies": {"public": {"guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 256}},
            "keys": {"sk-bench": "public"}}
TOPICS = ["moving to a new city", "a job interview", "a healthy breakfast", "saving for a house",
          "a birthday party", "learning Spanish", "a road trip", "a noisy neighbour"]


async def load(url: str, clients: int, max_tokens: int, key: str = "sk-bench") -> dict:
    """`clients` streaming requests fired together: requests/s, latency p50/p95, the first text's p50."""
    c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=3600)

    async def one(i: int) -> tuple[float, float]:
        t = time.perf_counter()
        first = None
        stream = await c.chat.completions.create(
            model="default", stream=True, max_tokens=max_tokens,
            messages=[{"role": "user", "content": f"Give me two tips about {TOPICS[i % len(TOPICS)]}."}])
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t
        done = time.perf_counter() - t
        return done, done if first is None else first

    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(i) for i in range(clients)), return_exceptions=True)
    finally:
        await c.close()  # inside this event loop (asyncio.run closes it afterwards)
    wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, tuple)]
    lat = sorted(r[0] for r in ok)
    errors = sum(isinstance(r, Exception) for r in results)
    return {"wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall, 3),
            "p50_s": round(statistics.median(lat), 2) if lat else None,
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2) if lat else None,
            "first_text_p50_s": round(statistics.median(r[1] for r in ok), 2) if ok else None, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    generator = build_server_generator("default", {}, max_batch=args.clients)
    generator.eos_ids = set()  # every request decodes exactly max_tokens
    policies = policies_from_dict(POLICIES)
    out = {}
    for label, batch in (("batched", args.clients), ("one_at_a_time", 1)):
        app = create_app(generator, policies, model_name="default", max_batch=batch, max_queue=args.clients)
        with live_server(app) as url:
            out[label] = asyncio.run(load(url, args.clients, args.max_tokens))
        print(label, out[label])
    print(json.dumps({"bench": "serve", "clients": args.clients, "max_tokens": args.max_tokens, **out,
                      "batched_speedup": round(out["batched"]["requests_per_s"]
                                               / out["one_at_a_time"]["requests_per_s"], 2)}))


if __name__ == "__main__":
    main()
