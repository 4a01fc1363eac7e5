"""Does a defended model tell the two system prompts apart? The check to run before relying on guidance.

Guidance follows the difference between the model under the positive ("Do not
provide any personal data.") and under the negative system prompt; where the
two agree it has nothing to amplify. For every preference pair this scores,
under each prompt, the ORPO log-odds of the pair's PII-free side over its PII
side (`log_odds` of `unleak.train.losses`: > 0 where the model prefers the
PII-free answer):

- trained on the CFG variant as intended: high under the positive prompt, low
  under the negative one (a large `separation`, the difference of the means);
- redacting whatever the prompt says (the plain pairs): high under both
  (`separation` ~0: the defence is the adapter, guidance adds little);
- having learnt neither: ~0 under both.

Pairs come from `unleak pairs build` (`pairs.jsonl`, or `pairs_cfg.jsonl`, of
which the positive rows, unswapped, are used) or any file in TRL's
conversational format whose chosen side is the PII-free one. Keep pairs
(`"mode": "keep"`: nothing private asked) are reported apart: both prompts
should prefer their kept answer.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unleak.chat import with_system_prompt
from unleak.config import OrpoSettings, PromptConfig
from unleak.errors import UnleakError
from unleak.train.data import PreferenceCollator, read_pair_rows, tokenize_pair
from unleak.train.orpo import orpo_batch_loss


def unswapped_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs with their PII-free side chosen: a CFG-variant file's positive rows, or every row."""
    if any("system" in r for r in rows):
        return [r for r in rows if r.get("system") == "positive"]
    return rows


def pair_log_odds(model: Any, tokenizer: Any, pairs: list[dict[str, Any]], system: str, *,
                  batch_size: int = 8, max_length: int = OrpoSettings.max_length,
                  max_prompt_length: int = OrpoSettings.max_prompt_length,
                  on_batch: Callable[[int], None] | None = None) -> list[float]:
    """ORPO log-odds of chosen over rejected for each pair, its prompt under the system prompt `system`;
    `on_batch(n)` after each batch of n pairs (progress)."""
    rows = [tokenize_pair({**p, "prompt": with_system_prompt(p["prompt"], system)}, tokenizer, max_length,
                          max_prompt_length) for p in pairs]
    collate = PreferenceCollator(tokenizer.pad_token_id, share_prompt=True)
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
            out += orpo_batch_loss(model, batch, beta=0.0)[0].log_odds.float().tolist()
            if on_batch is not None:
                on_batch(len(batch["prompt_ids"]))
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean_log_odds": round(statistics.fmean(values), 4),
            "prefers_chosen": round(sum(v > 0 for v in values) / len(values), 4)}


def prompt_separation(model: Any, tokenizer: Any, pairs: list[dict[str, Any]], prompts: PromptConfig | None = None,
                      *, batch_size: int = 8, max_length: int = OrpoSettings.max_length,
                      max_prompt_length: int = OrpoSettings.max_prompt_length,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per kind of pair ("redaction", "keep"): its count and, under the positive and the negative prompt, the
    mean log-odds of the chosen (PII-free or kept) side and the share of pairs that prefer it; for redaction
    pairs also `separation` = positive mean - negative mean. `pairs` have their PII-free side chosen
    (`unswapped_pairs`). Each pair is scored twice (`on_batch` counts both)."""
    prompts = prompts or PromptConfig()
    kinds = {"redaction": [p for p in pairs if p.get("mode") != "keep"],
             "keep": [p for p in pairs if p.get("mode") == "keep"]}
    result: dict[str, Any] = {}
    for kind, group in kinds.items():
        if not group:
            continue
        scores = {name: pair_log_odds(model, tokenizer, group, system, batch_size=batch_size,
                                      max_length=max_length, max_prompt_length=max_prompt_length,
                                      on_batch=on_batch)
                  for name, system in (("positive", prompts.positive), ("negative", prompts.negative))}
        result[kind] = {"pairs": len(group), **{name: _summary(v) for name, v in scores.items()}}
        if kind == "redaction":
            result[kind]["separation"] = round(result[kind]["positive"]["mean_log_odds"]
                                               - result[kind]["negative"]["mean_log_odds"], 4)
    return result


def separation_of_files(model: str, pairs_file: str | Path, adapter: str | None = None, limit: int | None = None,
                        seed: int = 0, device: str | None = None, progress: bool = False, **kwargs: Any
                        ) -> dict[str, Any]:
    """`prompt_separation` of `model` (with `adapter`) on a pairs file; `limit`: a seeded sample of its pairs;
    `progress`: a progress bar on stderr. The file is checked before any model loads."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from unleak.models import load_model, load_tokenizer

    if limit is not None and limit < 1:
        raise UnleakError(f"limit must be >= 1, got {limit}")
    pairs = unswapped_pairs(read_pair_rows(pairs_file))
    if not pairs:
        raise UnleakError(f"{pairs_file}: no pair under the positive prompt (field 'system')")
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    tokenizer = load_tokenizer(model)
    loaded = load_model(model, adapter=adapter, device=device, merge=adapter is not None)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("pairs under both prompts", total=2 * len(pairs))
        result = prompt_separation(loaded, tokenizer, pairs, on_batch=lambda n: bar.advance(task, n), **kwargs)
    return {"model": model, "adapter": adapter, "pairs_file": str(pairs_file), **result}
