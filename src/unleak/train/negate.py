"""Forgetting via negation (task vectors): `base - alpha * relu?(tuned - base)`, tensor by tensor.

`negate_checkpoint(base, tuned, out, settings)` streams both safetensors
checkpoints tensor by tensor (only the output shard being written is held in
memory), checks that architectures, tensor names and shapes match, and writes
a plain checkpoint (base's config and tokenizer) atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from unleak.config import NegationSettings
from unleak.errors import UnleakError


def negate_tensor(base: torch.Tensor, tuned: torch.Tensor, alpha: float, relu: bool) -> torch.Tensor:
    """base - alpha * delta, delta = tuned - base (ReLU'd when `relu`), computed in fp32, returned in base's dtype."""
    delta = tuned.float() - base.float()
    if relu:
        delta = delta.clamp(min=0)
    return (base.float() - alpha * delta).to(base.dtype)


def _shards(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UnleakError(f"{directory}: no *.safetensors weights (save the model with safetensors)")
    return files


def negate_checkpoint(base: str | Path, tuned: str | Path, out: str | Path,
                      settings: NegationSettings | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from unleak.models import resolve_model_path

    s = settings or NegationSettings()
    base_dir, tuned_dir, out = Path(resolve_model_path(str(base))), Path(resolve_model_path(str(tuned))), Path(out)
    arch = [json.loads((d / "config.json").read_text()).get("architectures") for d in (base_dir, tuned_dir)]
    if arch[0] != arch[1]:
        raise UnleakError(f"architecture mismatch: {base_dir} is {arch[0]}, {tuned_dir} is {arch[1]}")
    tuned_index: dict[str, Path] = {}
    for f in _shards(tuned_dir):
        with safe_open(f, "pt") as fh:
            tuned_index.update({k: f for k in fh.keys()})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    seen: set[str] = set()
    for shard in _shards(base_dir):
        result: dict[str, torch.Tensor] = {}
        with safe_open(shard, "pt") as fb:
            meta = fb.metadata()
            for key in fb.keys():
                if key not in tuned_index:
                    raise UnleakError(f"tensor {key} of {base_dir} is missing in {tuned_dir}")
                b = fb.get_tensor(key)
                with safe_open(tuned_index[key], "pt") as ft:
                    t = ft.get_tensor(key)
                if b.shape != t.shape:
                    raise UnleakError(f"shape mismatch for {key}: {tuple(b.shape)} vs {tuple(t.shape)}")
                result[key] = negate_tensor(b, t, s.alpha, s.relu)
                seen.add(key)
        save_file(result, tmp / shard.name, metadata=meta)
        del result
    extra = set(tuned_index) - seen
    if extra:
        raise UnleakError(f"{tuned_dir} has tensors {sorted(extra)[:3]}... that {base_dir} lacks")
    for f in base_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, tmp / f.name)
    (tmp / "unleak_negation.json").write_text(json.dumps({"base": str(base), "tuned": str(tuned),
                                                          "alpha": s.alpha, "relu": s.relu}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
