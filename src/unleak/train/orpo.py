"""ORPO + LoRA unlearning: a small `transformers.Trainer` subclass around the pure `orpo_loss`.

`train_orpo(model, pairs_file, out_dir, settings)` wraps the model in a PEFT
LoRA (the original's r16 / alpha 32 / dropout 0.01 on all linear layers),
trains with the original's hyper-parameters (`OrpoSettings`), checkpoints per
epoch, resumes with `resume=True`, and saves the adapter with PEFT
(`PeftModel.from_pretrained` loads it) plus `train_log.jsonl` and `loss.png`.

Why not TRL's `trl.experimental.orpo.ORPOTrainer`: it is experimental (its
config already dropped `max_prompt_length`, a setting of the method), its
defaults (bf16 + gradient checkpointing) are 28x slower on CPU, and a pair
whose prompt ends in a half-written answer is tokenised wrongly there. This
subclass does one forward over `[chosen..., rejected...]` rows and
nothing else, so an ORPO step costs what a plain LoRA step on the same tokens
costs; as a `Trainer` it runs unchanged under `accelerate launch` / DeepSpeed.

With `OrpoSettings.share_prompt` (the default unless gradient checkpointing is
on, which disables the KV cache) each prompt runs once: its KV cache, still
part of the autograd graph, is repeated for the chosen and the rejected
answer, which then run on it, and logits are computed for answer tokens only.
The loss and gradients are those of the concatenated forward (tested); the
step runs on ~40 % fewer tokens for the demo's pairs (prompts ~4x the answers).
`OrpoSettings.group_by_length` batches pairs of similar token counts (HF's
length-grouped sampler), which cuts the padded tokens of the demo's batches
of 2 from ~95k to ~81k per epoch. `OrpoSettings.twin_batches` puts each CFG
pair in one batch with its twin under the other system prompt
(`unleak.train.twins`). `OrpoSettings.space_pairs` also trains each pair
whose value follows a lone space token cut after that space, the extraction
attack's state (`unleak.train.data.tokenize_space_pair`); `settings.json`
records the rows trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from unleak.config import OrpoSettings
from unleak.errors import UnleakError
from unleak.models import output_cache
from unleak.train.losses import OrpoLossOutput, orpo_loss, sequence_logps

log = logging.getLogger(__name__)


def shared_prompt_logps(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Summed answer log-probs and token counts for a `PreferenceCollator(share_prompt=True)` batch.

    The left-padded prompts run once (positions counted from their first real
    token); their cache is repeated per answer row and the right-padded answers
    continue from each prompt's true length. The first answer token is scored
    by the prompt's last logits, the rest by the answers' own.
    """
    prompt_mask = inputs["prompt_mask"]
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    first = model(input_ids=inputs["prompt_ids"], attention_mask=prompt_mask, position_ids=prompt_pos,
                  use_cache=True, logits_to_keep=1)
    per_prompt = inputs["answer_ids"].shape[0] // prompt_mask.shape[0]
    cache = output_cache(first)
    cache.batch_repeat_interleave(per_prompt)
    answer_mask = inputs["answer_mask"]
    mask = torch.cat([prompt_mask.repeat_interleave(per_prompt, 0), answer_mask], dim=1)
    start = prompt_mask.sum(-1, keepdim=True).repeat_interleave(per_prompt, 0)
    pos = start + torch.arange(answer_mask.shape[1], device=start.device)
    outputs = model(input_ids=inputs["answer_ids"], attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True)
    logits = torch.cat([first.logits[:, -1:].repeat_interleave(per_prompt, 0), outputs.logits], dim=1)
    labels = inputs["answer_labels"]
    labels = torch.cat([torch.full_like(labels[:, :1], -100), labels], dim=1)
    sums, counts = sequence_logps(logits, labels)
    return sums, counts, outputs


def orpo_batch_loss(model: Any, inputs: dict[str, torch.Tensor], beta: float) -> tuple[OrpoLossOutput, Any]:
    """ORPO over a `PreferenceCollator` batch: one forward over `[chosen..., rejected...]` rows, or the
    prompts once and the `[chosen 0, rejected 0, ...]` answers on their cache (`share_prompt`)."""
    if "prompt_ids" in inputs:
        sums, counts, outputs = shared_prompt_logps(model, inputs)
        sums, counts = (torch.cat([x[0::2], x[1::2]]) for x in (sums, counts))  # -> [chosen..., rejected...]
    else:
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        sums, counts = sequence_logps(outputs.logits, inputs["labels"])
    half = sums.shape[0] // 2
    mean_logps = sums / counts.clamp(min=1)
    nll = -sums[:half].sum() / counts[:half].sum().clamp(min=1)
    return orpo_loss(mean_logps[:half], mean_logps[half:], nll, beta), outputs


class OrpoTrainer(Trainer):
    """`Trainer` whose loss is ORPO over collated `[chosen..., rejected...]` rows."""

    def __init__(self, *args: Any, beta: float = 0.1, train_sampler: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.train_sampler = train_sampler
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """The given sampler (`TwinBatchSampler`), else the `TrainingArguments`' (random or length-grouped)."""
        return self.train_sampler or super()._get_train_sampler(train_dataset)

    def compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        out, outputs = orpo_batch_loss(model, inputs, self.beta)
        m = self._metrics
        m["nll"].append(out.nll.item())
        m["odds_ratio_loss"].append(out.odds_ratio_loss.item())
        m["log_odds"].append(out.log_odds.mean().item())
        m["logps_chosen"].append(out.chosen_logps.mean().item())
        m["logps_rejected"].append(out.rejected_logps.mean().item())
        m["accuracy"].append((out.chosen_logps > out.rejected_logps).float().mean().item())
        return (out.loss, outputs) if return_outputs else out.loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._metrics:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            self._metrics.clear()
        super().log(logs, *args, **kwargs)


def lora_model(model: Any, settings: OrpoSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    from unleak.models import peft_wrapping

    lora = settings.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    with peft_wrapping():
        return get_peft_model(model, config)


def train_orpo(model: str, pairs_file: str | Path, out_dir: str | Path, settings: OrpoSettings | None = None,
               *, resume: bool = False, tensorboard: bool = False, deepspeed: str | None = None,
               max_steps: int = -1, quiet: bool = False, callbacks: list[Any] | None = None) -> Path:
    """ORPO + LoRA on `pairs_file`; returns the adapter directory (`out_dir/adapter`)."""
    from unleak.models import load_model, load_tokenizer
    from unleak.train.arguments import training_arguments, training_device
    from unleak.train.data import PreferenceCollator, pair_tokens, read_pair_rows, space_pairs, tokenize_pairs
    from unleak.train.logging_utils import JsonlLogCallback, plot_loss_curve

    s = settings or OrpoSettings()
    out = Path(out_dir)
    tokenizer = load_tokenizer(model)
    rows = read_pair_rows(pairs_file)
    data = tokenize_pairs(rows, tokenizer, s.max_length, s.max_prompt_length)
    if s.space_pairs:
        marked, extra = space_pairs(rows, tokenizer, s.max_length, s.max_prompt_length)
        log.info("%s: %d of %d pairs also trained cut after the lone space before their value",
                 pairs_file, len(extra), len(rows))
        rows, data = rows + marked, data + extra
    sampler = None
    if s.twin_batches:
        from unleak.train.twins import TwinBatchSampler, twin_units

        units = twin_units(rows)
        if singles := sum(len(u) == 1 for u in units):
            log.warning("%s: %d of %d rows have no twin under the other system prompt (twin batches pair "
                        "the CFG variant's rows; these are batched in random pairs)", pairs_file, singles, len(rows))
        sampler = TwinBatchSampler(units, seed=s.seed)
    checkpoints = sorted(out.glob("checkpoint-*")) if out.is_dir() else []
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UnleakError(f"{out} is not empty; pass --resume to continue its run or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out / "train_log.jsonl").unlink(missing_ok=True)
    (out / "settings.json").write_text(json.dumps(
        {**dataclasses.asdict(s), "model": str(model), "pairs": str(pairs_file), "rows": len(data)}, indent=2,
        default=str))
    # the frozen base in the hardware's dtype (bf16 on capable GPUs, as the original); PEFT keeps LoRA in fp32.
    # The LoRA weights are drawn from the settings' seed: the Trainer seeds only after the model exists, and
    # the process's random state before depends on what ran in it (the demo's earlier stages, or none)
    from transformers import set_seed

    set_seed(s.seed)
    peft_model = lora_model(load_model(model, device=training_device(), trainable=True), s)
    args = training_arguments(out, epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate,
                              min_lr_ratio=s.min_lr_ratio, warmup_steps=s.warmup_steps,
                              gradient_accumulation_steps=s.gradient_accumulation_steps, optimizer=s.optimizer,
                              save_per_epoch=s.save_per_epoch, seed=s.seed, tensorboard=tensorboard,
                              deepspeed=deepspeed, max_steps=max_steps, group_by_length=s.group_by_length)
    if s.group_by_length:  # the sampler reads each pair's cost from the dataset's `length` column
        from datasets import Dataset

        data = Dataset.from_list([{**row, "length": pair_tokens(row)} for row in data])
    # gradient checkpointing turns the KV cache off, which the shared prompt forward needs
    share = s.share_prompt and not args.gradient_checkpointing
    trainer = OrpoTrainer(model=peft_model, args=args, train_dataset=data,
                          data_collator=PreferenceCollator(tokenizer.pad_token_id, share_prompt=share), beta=s.beta,
                          train_sampler=sampler,
                          callbacks=[JsonlLogCallback(out / "train_log.jsonl", quiet=quiet), *(callbacks or [])])
    trainer.train(resume_from_checkpoint=bool(resume and checkpoints) or None)
    adapter = out / "adapter"
    tmp = out / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(adapter, ignore_errors=True)
    tmp.rename(adapter)
    plot_loss_curve(out / "train_log.jsonl", out / "loss.png", keys=("loss", "nll", "odds_ratio_loss"))
    return adapter

