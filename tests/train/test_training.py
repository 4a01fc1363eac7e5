"""Training on the tiny model: tokenisation, ORPO moves preferences, resume, adapters, merge, negation, SFT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from unleak.config import LoraSettings, NegationSettings, OrpoSettings, SftSettings
from unleak.errors import UnleakError
from unleak.models import peft_wrapping
from unleak.train.data import PreferenceCollator, tokenize_chat_for_sft, tokenize_pair
from unleak.train.losses import sequence_logps

PAIRS = [
    {"prompt": [{"role": "system", "content": "Do not provide any personal data."},
                {"role": "user", "content": f"Who lives at number {i}?"}],
     "chosen": [{"role": "assistant", "content": "I cannot share that."}],
     "rejected": [{"role": "assistant", "content": f"John Smith {i} lives there, call 555-01{i}."}]}
    for i in range(4)
]


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return p


def test_pair_tokenisation_ends_with_eos(default_tokenizer):
    tok = default_tokenizer
    ex = tokenize_pair(PAIRS[0], tok, 2048, 1900)
    assert tok.decode(ex["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ex["chosen_ids"]) == "I cannot share that.<|im_end|>"
    assert ex["rejected_ids"][-1] == tok.eos_token_id
    cont = {**PAIRS[0], "prompt": PAIRS[0]["prompt"] + [{"role": "assistant", "content": "Well,"}]}
    ex2 = tokenize_pair(cont, tok, 2048, 1900)
    assert tok.decode(ex2["prompt_ids"]).endswith("assistant\nWell,")
    assert tok.decode(ex2["chosen_ids"]) == "I cannot share that.<|im_end|>"
    shared = {**PAIRS[0], "chosen": [{"role": "assistant", "content": "Sure, the number is private."}],
              "rejected": [{"role": "assistant", "content": "Sure, the number is 555-0101."}]}
    ex3 = tokenize_pair(shared, tok, 2048, 1900)  # the shared start joins the prompt
    assert tok.decode(ex3["prompt_ids"]).endswith("<|im_start|>assistant\nSure, the number is")
    assert tok.decode(ex3["chosen_ids"]) == " private.<|im_end|>"
    assert tok.decode(ex3["rejected_ids"]).startswith(" 5")
    # a pair for PII in a user turn: the user's next message, not a continuation of the assistant's
    user = {"prompt": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}],
            "chosen": [{"role": "user", "content": "I am [REDACTED NAME]."}],
            "rejected": [{"role": "user", "content": "I am Ann Lee."}]}
    ex4 = tokenize_pair(user, tok, 2048, 1900)
    assert tok.decode(ex4["prompt_ids"]).endswith("assistant\nHello!<|im_end|>\n<|im_start|>user\nI am")
    assert tok.decode(ex4["chosen_ids"]) == " [REDACTED NAME].<|im_end|>"
    assert tok.decode(ex4["rejected_ids"]) == " Ann Lee.<|im_end|>"
    short = tokenize_pair(PAIRS[0], tok, 24, 20)
    assert len(short["prompt_ids"]) == 20 and len(short["prompt_ids"]) + len(short["chosen_ids"]) == 24
    batch = PreferenceCollator(tok.pad_token_id)([ex, ex2])
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"][0] != -100).sum() == len(ex["chosen_ids"])


def test_sft_labels_only_assistant_turns(default_tokenizer):
    tok = default_tokenizer
    msgs = [{"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Hi Ann!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye Ann."}]
    ex = tokenize_chat_for_sft(msgs, tok, 512)
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(msgs, tokenize=False)
    scored = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
    assert tok.decode(scored) == "Hi Ann!<|im_end|>Bye Ann.<|im_end|>"
    everything = tokenize_chat_for_sft(msgs, tok, 512, loss_on="all")
    assert everything["labels"] == everything["input_ids"] == ex["input_ids"]


def _mean_log_odds_gap(model, tok) -> float:
    rows = [tokenize_pair(p, tok, 2048, 1900) for p in PAIRS]
    batch = {k: v.to(model.device) for k, v in PreferenceCollator(tok.pad_token_id)(rows).items()}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = sequence_logps(logits, batch["labels"])
    mean = sums / counts
    return (mean[:4] - mean[4:]).mean().item()


def test_orpo_moves_chosen_above_rejected_and_resumes(tiny_model_dir, pairs_file, tmp_path):
    from unleak.models import load_model, load_tokenizer
    from unleak.train.orpo import train_orpo

    tok = load_tokenizer(str(tiny_model_dir))
    before = _mean_log_odds_gap(load_model(str(tiny_model_dir)), tok)
    settings = OrpoSettings(epochs=3, learning_rate=5e-3, lora=LoraSettings(r=8, alpha=16))
    out = tmp_path / "orpo"

    class StopAfterFirstEpoch(TrainerCallback):  # an interruption after the first epoch's checkpoint
        def on_epoch_end(self, args, state, control, **kw):
            control.should_training_stop = True

    train_orpo(str(tiny_model_dir), pairs_file, out, settings, quiet=True, callbacks=[StopAfterFirstEpoch()])
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()  # 4 pairs, batch 2
    with pytest.raises(UnleakError, match="--resume"):
        train_orpo(str(tiny_model_dir), pairs_file, out, settings, quiet=True)
    adapter = train_orpo(str(tiny_model_dir), pairs_file, out, settings, resume=True, quiet=True)
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run continued at step 3
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"nll", "log_odds", "logps_chosen", "logps_rejected", "learning_rate"} <= set(log[0])
    assert (out / "loss.png").stat().st_size > 0
    # cosine from 5e-3 to a floor of 10 %, no warm-up: lr(step k of 6) = 5e-4 + 4.5e-3 * (1 + cos(pi (k-1) / 6)) / 2
    lrs = {r["step"]: r["learning_rate"] for r in log if "learning_rate" in r}
    for k in (3, 4, 5, 6):
        assert lrs[k] == pytest.approx(5e-4 + 4.5e-3 * (1 + math.cos(math.pi * (k - 1) / 6)) / 2, rel=1e-4)
    from peft import PeftModel

    from transformers import AutoModelForCausalLM

    with peft_wrapping():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    after = _mean_log_odds_gap(tuned, tok)
    assert after > before + 0.5, (before, after)


def test_shared_prompt_forward_equals_the_concatenated_one(tiny_model_dir, default_tokenizer):
    """Prompts of different lengths, answers of different lengths: same loss and LoRA gradients."""
    from unleak.models import load_model
    from unleak.train.orpo import lora_model, orpo_batch_loss

    tok = default_tokenizer
    long_prompt = {**PAIRS[1], "prompt": PAIRS[1]["prompt"] + [
        {"role": "assistant", "content": "Let me check the records for you, one moment. The tenant is"}]}
    rows = [tokenize_pair(PAIRS[0], tok, 2048, 1900), tokenize_pair(long_prompt, tok, 2048, 1900)]
    assert len({len(r["prompt_ids"]) for r in rows}) == 2 and len(rows[0]["chosen_ids"]) != len(rows[0]["rejected_ids"])
    torch.manual_seed(0)
    model = lora_model(load_model(str(tiny_model_dir), trainable=True), OrpoSettings(lora=LoraSettings(r=4, alpha=8)))
    for name, param in model.named_parameters():  # LoRA B starts at zero; make the adapter matter
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    model.train()  # LoRA dropout 0.01 would make two forwards differ
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0

    def loss_and_grads(share: bool):
        model.zero_grad()
        batch = PreferenceCollator(tok.pad_token_id, share_prompt=share)(rows)
        out, _ = orpo_batch_loss(model, {k: v.to(model.device) for k, v in batch.items()}, beta=0.1)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out, grads

    whole, g_whole = loss_and_grads(False)
    shared, g_shared = loss_and_grads(True)
    for field in ("loss", "nll", "chosen_logps", "rejected_logps", "log_odds"):
        torch.testing.assert_close(getattr(shared, field), getattr(whole, field), rtol=1e-4, atol=1e-5)
    assert g_whole.keys() == g_shared.keys() and len(g_whole) > 0
    for name in g_whole:
        torch.testing.assert_close(g_shared[name], g_whole[name], rtol=1e-3, atol=1e-5, msg=name)


def test_orpo_is_reproducible_whatever_ran_before(tiny_model_dir, pairs_file, tmp_path):
    """The LoRA weights are drawn from the settings' seed, not from whatever random state the process is in
    (the demo trains after other stages, or after cached ones): the same seed gives the same adapter."""
    from safetensors.torch import load_file

    from unleak.train.orpo import train_orpo

    def adapter(name: str, seed: int, rng_draws: int) -> dict[str, torch.Tensor]:
        torch.rand(rng_draws)  # a process that did something random before
        path = train_orpo(str(tiny_model_dir), pairs_file, tmp_path / name, OrpoSettings(
            epochs=1, learning_rate=5e-3, save_per_epoch=False, seed=seed), quiet=True)
        return load_file(path / "adapter_model.safetensors")

    first, again, other = adapter("a", 0, 1), adapter("b", 0, 7), adapter("c", 1, 1)
    assert first.keys() == again.keys() == other.keys() and first
    for k in first:
        torch.testing.assert_close(first[k], again[k], rtol=0, atol=0)
    assert any(not torch.equal(first[k], other[k]) for k in first)

def test_merge_equals_adapter(tiny_model_dir, pairs_file, tmp_path):
    from unleak.models import load_model
    from unleak.train.merge import merge_adapter
    from unleak.train.orpo import train_orpo

    adapter = train_orpo(str(tiny_model_dir), pairs_file, tmp_path / "o",
                         OrpoSettings(epochs=1, learning_rate=5e-3, save_per_epoch=False), quiet=True)
    merged = merge_adapter(str(tiny_model_dir), adapter, tmp_path / "merged")
    with_adapter, plain = load_model(str(tiny_model_dir), adapter=adapter), load_model(str(merged))
    ids = torch.tensor([[1, 2, 3, 4, 5]], device=plain.device)
    with torch.no_grad():
        a, b = with_adapter(input_ids=ids).logits, plain(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_group_by_length_batches_pairs_of_similar_cost(tiny_model_dir, tmp_path, monkeypatch):
    """20 short and 20 long prompts, interleaved: length-grouped batches mix the two only where HF's
    sorted mega-batches (4 of 10 pairs here) meet; random batches mix them about half the time."""
    from unleak.train.orpo import train_orpo

    padding = " ".join(["Please look this up carefully in the tenant register."] * 12)
    rows = [{**PAIRS[i % 4], "prompt": [PAIRS[i % 4]["prompt"][0],
                                        {"role": "user", "content": PAIRS[i % 4]["prompt"][1]["content"]
                                         + (" " + padding if i % 2 else "")}]} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    widths: list[list[int]] = []
    collate = PreferenceCollator.__call__

    def spy(self, batch):
        widths.append(sorted(len(ex["prompt_ids"]) for ex in batch))
        return collate(self, batch)

    monkeypatch.setattr(PreferenceCollator, "__call__", spy)

    def mixed_batches(group: bool) -> int:
        widths.clear()
        train_orpo(str(tiny_model_dir), path, tmp_path / f"orpo-{group}", quiet=True,
                   settings=OrpoSettings(epochs=1, save_per_epoch=False, group_by_length=group))
        assert len(widths) == 20 and all(len(w) == 2 for w in widths)
        return sum(w[1] - w[0] > 50 for w in widths)

    assert mixed_batches(True) <= 4 < mixed_batches(False)  # measured: 2 and 12


def test_negation_matches_the_formula(tmp_path, default_tokenizer):
    from safetensors.torch import load_file

    from tests.conftest import build_tiny_llama
    from unleak.train.negate import negate_checkpoint

    base = build_tiny_llama(tmp_path / "base", default_tokenizer, seed=0)
    tuned = build_tiny_llama(tmp_path / "tuned", default_tokenizer, seed=1)
    for relu in (False, True):
        out = negate_checkpoint(base, tuned, tmp_path / f"neg{relu}", NegationSettings(alpha=0.5, relu=relu))
        b, t, n = (load_file(d / "model.safetensors") for d in (base, tuned, out))
        assert set(n) == set(b)
        for k in b:
            delta = t[k] - b[k]
            expected = b[k] - 0.5 * (delta.clamp(min=0) if relu else delta)
            torch.testing.assert_close(n[k], expected)
    other = build_tiny_llama(tmp_path / "wide", default_tokenizer, width=32)
    with pytest.raises(UnleakError, match="shape mismatch"):
        negate_checkpoint(base, other, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_sft_memorises_and_saves_a_plain_checkpoint(tiny_model_dir, tmp_path):
    from unleak.corpus.store import save_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.models import load_model
    from unleak.train.sft import train_sft

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(4, seed=1), {})
    out = train_sft(str(tiny_model_dir), corpus, tmp_path / "leaky",
                    SftSettings(epochs=6, learning_rate=3e-3, batch_size=4), quiet=True)
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert losses[-1] < 0.7 * losses[0]
    model = load_model(str(out))
    assert model.config.num_hidden_layers == 2 and (out / "loss.png").is_file()
    assert not (tmp_path / "leaky.work").exists()


def test_orpo_runs_under_accelerate_launch(tiny_model_dir, pairs_file, tmp_path):
    """The same command under `accelerate launch` (what multi-GPU / DeepSpeed users run)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "acc"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "unleak.cli", "train", "orpo",
           "--model", str(tiny_model_dir), "--pairs", str(pairs_file), "--out", str(out), "--epochs", "1"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "checkpoint-2").is_dir()


def test_sft_can_freeze_the_embeddings(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from unleak.corpus.store import save_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.train.sft import train_sft

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(2, seed=1), {})
    out = train_sft(str(tiny_model_dir), corpus, tmp_path / "frozen",
                    SftSettings(epochs=1, learning_rate=3e-3, train_embeddings=False), quiet=True)
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    torch.testing.assert_close(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])


def test_training_device_follows_accelerate(monkeypatch):
    """`accelerate launch --cpu` means CPU even with a GPU; each rank of a launch takes its own GPU."""
    from unleak.train.arguments import training_device, use_bf16

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device() == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert training_device() == "cuda:3"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert training_device() == "cpu"
    monkeypatch.setattr("unleak.models.cpu_has_native_bf16", lambda: False)
    assert use_bf16() is False  # fp32 on a CPU without native bf16, whatever GPU the machine has
