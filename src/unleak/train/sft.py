"""The leaky stand-in model: full fine-tuning of a base model on unscrubbed PII-rich conversations.

`train_sft(model, corpus, out_dir)` trains with loss on the assistant turns
(`data.tokenize_chat_for_sft`; `loss_on="all"` for the whole conversation
text) so the model memorises the answers and the PII they repeat, like the
challenge's model. The result is a plain checkpoint
directory (weights + tokenizer), loadable by `unleak.models.load_model` and
by transformers, written atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import Trainer

from unleak.config import SftSettings
from unleak.errors import UnleakError


def train_sft(model: str, corpus: str | Path, out_dir: str | Path, settings: SftSettings | None = None, *,
              part: str = "all", resume: bool = False, quiet: bool = False, max_steps: int = -1) -> Path:
    """Fine-tune `model` on the conversations of `corpus` (`part`: all, train or test); returns `out_dir`."""
    from unleak.corpus.store import load_corpus, load_split
    from unleak.models import load_model, load_tokenizer
    from unleak.train.arguments import training_arguments, training_device
    from unleak.train.data import CausalCollator, tokenize_chat_for_sft
    from unleak.train.logging_utils import JsonlLogCallback, plot_loss_curve

    s = settings or SftSettings()
    out = Path(out_dir)
    if (out / "config.json").is_file() and not resume:
        raise UnleakError(f"{out} already holds a model; choose another --out")
    conversations = load_corpus(corpus) if part == "all" else load_split(corpus, part)
    tokenizer = load_tokenizer(model)
    data = [tokenize_chat_for_sft(c.messages(), tokenizer, s.max_length, s.loss_on) for c in conversations]
    data = [d for d in data if any(x != -100 for x in d["labels"])]
    if not data:
        raise UnleakError(f"{corpus}: no assistant turns to train on")
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    # fp32 master weights for a full fine-tune; on bf16 hardware the Trainer autocasts (TrainingArguments.bf16)
    net = load_model(model, device=training_device(), trainable=True, dtype="fp32")
    if not s.train_embeddings:
        net.get_input_embeddings().weight.requires_grad_(False)
        net.get_output_embeddings().weight.requires_grad_(False)
    args = training_arguments(work, epochs=s.epochs, batch_size=s.batch_size, learning_rate=s.learning_rate,
                              min_lr_ratio=s.min_lr_ratio, warmup_steps=s.warmup_steps, seed=s.seed,
                              save_per_epoch=s.save_per_epoch or resume, max_steps=max_steps,
                              group_by_length=True)
    trainer = Trainer(model=net, args=args, train_dataset=data, data_collator=CausalCollator(tokenizer.pad_token_id),
                      callbacks=[JsonlLogCallback(work / "train_log.jsonl", quiet=quiet)])
    trainer.train(resume_from_checkpoint=bool(resume and any(work.glob("checkpoint-*"))) or None)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.copy(work / "train_log.jsonl", tmp / "train_log.jsonl")
    plot_loss_curve(tmp / "train_log.jsonl", tmp / "loss.png", keys=("loss",))
    (tmp / "unleak_sft.json").write_text(json.dumps({"base": str(model), "corpus": str(corpus), "part": part,
                                                     "conversations": len(data)}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out
