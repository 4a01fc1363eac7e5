"""Benchmark: texts/s of each detector vs a per-text `nlp(text)` loop (the original's way).

Same texts for all (user/assistant turns of a synthetic corpus), one run.
Last line: one JSON object with texts/s per detector and `combined_speedup_vs_loop`.
"""

from __future__ import annotations

import argparse
import json
import time

from unleak.corpus.synth import synthesize_corpus
from unleak.pii import build_detector
from unleak.pii.detectors import load_spacy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=1000)
    args = ap.parse_args()
    texts = [t.text for c in synthesize_corpus(400, seed=7) for t in c.turns if t.role != "system"][: args.texts]
    result: dict[str, float | int] = {"texts": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts), 1)}
    nlp = load_spacy("auto")
    nlp("warm up")
    t = time.perf_counter()
    for text in texts:
        _ = [e for e in nlp(text).ents]
    result["per_text_loop_texts_per_s"] = round(len(texts) / (time.perf_counter() - t), 1)
    for name in ("ner", "patterns", "combined"):
        det = build_detector(name, nlp=nlp)
        det.detect(texts[:8])
        t = time.perf_counter()
        det.detect(texts)
        result[f"{name}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t), 1)
    result["combined_speedup_vs_loop"] = round(result["combined_texts_per_s"] / result["per_text_loop_texts_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
