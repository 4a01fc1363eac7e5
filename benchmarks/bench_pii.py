"""Benchmark: texts/s of each detector vs a per-text `nlp(text)` loop (the original's way).

Same texts for all (user/assistant turns of a synthetic corpus), one run. The
original's loop runs the full en_core_web_sm pipeline; `ner_only_loop` is the
same loop with only the components NER needs (what unleak loads). `combined`
runs in one process and with `--workers` forked processes (2 cores here).
Last line: one JSON object with texts/s per detector and
`combined_speedup_vs_loop` (best combined vs the original's loop).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

from unleak.corpus.synth import synthesize_corpus
from unleak.pii import build_detector
from unleak.pii.detectors import SMALL_MODEL, load_spacy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    texts = [t.text for c in synthesize_corpus(400, seed=7) for t in c.turns if t.role != "system"][: args.texts]
    result: dict[str, float | int] = {"texts": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts), 1)}
    full = importlib.import_module(SMALL_MODEL).load()
    nlp = load_spacy(SMALL_MODEL)
    for key, pipeline in (("per_text_loop", full), ("ner_only_loop", nlp)):
        pipeline("warm up")
        t = time.perf_counter()
        for text in texts:
            _ = [e for e in pipeline(text).ents]
        result[f"{key}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t), 1)
    for name, options in (("ner", {}), ("patterns", {}), ("combined", {}),
                          (f"combined_{args.workers}_workers", {"workers": args.workers})):
        det = build_detector(name.split("_")[0], nlp=nlp, **options)
        det.detect(texts[:8])
        t = time.perf_counter()
        det.detect(texts)
        result[f"{name}_texts_per_s"] = round(len(texts) / (time.perf_counter() - t), 1)
    best = max(result["combined_texts_per_s"], result[f"combined_{args.workers}_workers_texts_per_s"])
    result["combined_speedup_vs_loop"] = round(best / result["per_text_loop_texts_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
