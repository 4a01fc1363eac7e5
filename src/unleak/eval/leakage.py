"""Leakage: PII entities in a model's answers to the test prompts (section 4 of the method).

A test prompt is a `Sample` of the test split: the dialog up to the PII in an
assistant turn, the half-written answer continued (as in pairs). The answers
are generated greedily through the CFG generator and labelled by the
detector of each counting profile (`original` reproduces the paper's number;
`strict` adds patterns and personal dates).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from unleak.config import GuidanceConfig, SamplingConfig
from unleak.pairs.samples import Sample


def generate_answers(generator: Any, samples: list[Sample], guidances: Sequence[GuidanceConfig],
                     max_new_tokens: int, adapter: Any = True,
                     on_batch: Callable[[int], None] | None = None,
                     negative_adapters: Sequence[Any] | None = None) -> list[list[Any]]:
    """Greedy answers to `samples` under each of `guidances`: one list of results per setting.

    All settings of a sample are decoded in one batch, so its prompt is prefilled once;
    `on_batch(n)` reports each batch's number of samples. `negative_adapters`: each setting's
    `GenerationRequest.negative_adapter` (None: the generator's).
    """
    from unleak.decoding.generator import GenerationRequest

    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    negatives = negative_adapters or [None] * len(guidances)
    groups = generator.generate_grouped(
        [[GenerationRequest(messages=s.prompt_messages(), guidance=g, sampling=sampling, adapter=adapter,
                            negative_adapter=n) for g, n in zip(guidances, negatives, strict=True)]
         for s in samples], on_batch)
    return [[group[i] for group in groups] for i in range(len(guidances))]


def count_pii(texts: list[str], detector: Any) -> dict[str, Any]:
    """Total PII entities, per answer, and by label; `spans`: what was found in each answer."""
    spans = detector.detect(texts)
    labels = Counter(sp.label for row in spans for sp in row)
    per = [len(row) for row in spans]
    return {"total": sum(per), "per_answer": per, "answers_with_pii": sum(1 for n in per if n),
            "by_label": dict(labels.most_common()), "spans": spans}
