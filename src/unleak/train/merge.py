"""Fold a PEFT LoRA adapter into its base model and save a plain checkpoint (atomically)."""

from __future__ import annotations

import shutil
from pathlib import Path


def merge_adapter(model: str, adapter: str | Path, out: str | Path) -> Path:
    from unleak.models import load_model, load_tokenizer

    out = Path(out)
    merged = load_model(model, adapter=adapter, device="cpu", dtype="fp32").merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    load_tokenizer(model).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
