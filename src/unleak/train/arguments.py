"""`transformers.TrainingArguments` for unleak's trainers: precision by hardware, cosine to a floor, logs.

fp32 on CPUs without native bf16 and no gradient checkpointing by default
there (bf16 emulation and recomputation made a step 28x slower on a 2-core
CPU); bf16 on GPUs that support it. The same arguments work under
`accelerate launch` (multi-GPU, DeepSpeed via `--deepspeed CONFIG`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch


def training_device() -> str:
    """The device this training process runs on, as `accelerate` decides it.

    `cpu` when accelerate is told so (`accelerate launch --cpu` sets `ACCELERATE_USE_CPU`) or no GPU
    is visible; else this process's GPU (`cuda:LOCAL_RANK`: each rank of a multi-GPU launch loads its
    model onto its own GPU, not all onto GPU 0)."""
    import os

    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def use_bf16(device: str | None = None) -> bool:
    from unleak.models import cpu_has_native_bf16

    if (device or training_device()) == "cpu":
        return cpu_has_native_bf16()
    return torch.cuda.is_bf16_supported()


def training_arguments(out_dir: str | Path, *, epochs: float, batch_size: int, learning_rate: float,
                       min_lr_ratio: float, warmup_steps: int = 0, gradient_accumulation_steps: int = 1,
                       optimizer: str = "adamw_torch", save_per_epoch: bool = True, seed: int = 0,
                       gradient_checkpointing: bool | None = None, tensorboard: bool = False,
                       deepspeed: str | None = None, max_steps: int = -1, logging_steps: int = 1,
                       group_by_length: bool = False) -> Any:
    from transformers import TrainingArguments

    device = training_device()
    on_gpu = device != "cpu"
    # transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        # cosine decaying to `min_lr_ratio` of the initial lr (the original: 10 %, no warm-up)
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": min_lr_ratio},
        warmup_steps=warmup_steps,
        optim=optimizer,
        bf16=use_bf16(device),
        **{checkpointing: on_gpu if gradient_checkpointing is None else gradient_checkpointing},
        save_strategy="epoch" if save_per_epoch else "no",
        logging_steps=logging_steps,
        report_to=["tensorboard"] if tensorboard else [],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
        use_cpu=not on_gpu,
        disable_tqdm=False,
        deepspeed=deepspeed,
        # batches of similar lengths waste less compute on padding
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
