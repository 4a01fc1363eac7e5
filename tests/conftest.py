"""Shared fixtures: the default tokenizer and a tiny random Llama model built from it.

Models load on the hardware's device (a GPU when there is one) in fp32.

The tiny model (2 layers, width 64) uses the embedded default's tokenizer and
chat template, so tests exercise the real loading, chat-template and decoding
code in seconds. `SHARED_DATA` points at ../shared/data when present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the suite compares greedy tokens and logits exactly: fp32 on every device (a GPU's default bf16
# breaks near-ties differently in batched and single rows); the dtype policy has its own test
os.environ.setdefault("UNLEAK_DTYPE", "fp32")
SHARED_DATA = Path(os.environ.get("UNLEAK_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared data not available: {path} (tests that need ../shared/data skip without it)")
    return path


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The materialised embedded default checkpoint (built once per cache)."""
    from unleak.models import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from unleak.models import load_tokenizer

    return load_tokenizer(str(default_model_dir))


def build_tiny_llama(out: Path, tokenizer, seed: int = 0, layers: int = 2, width: int = 64) -> Path:
    """Save a random `layers`-layer Llama of hidden size `width` with `tokenizer` to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # a larger init than the default gives peaked next-token distributions, so
        # greedy decoding has no near-ties that would make comparisons flaky
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_lora(model, r: int = 8, alpha: int = 64):
    """`model` with a LoRA on every linear layer whose weights are all random (seed the RNG first), wrapped
    as the library wraps models (`peft_wrapping`: no deprecation warning from PEFT)."""
    from peft import LoraConfig, get_peft_model

    from unleak.models import peft_wrapping

    with peft_wrapping():
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                                init_lora_weights=False))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A 2-layer, width-64 random Llama with the default's tokenizer, saved to a temp dir."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), default_tokenizer)


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A random LoRA (r 4, alpha 32, seed 0) on every linear layer of the tiny model, saved as PEFT saves it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = random_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), r=4, alpha=32)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def build_other_tokenizer(default_tokenizer, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained here on a few sentences, with the default's special tokens and chat
    template: another vocabulary (ids that mean other text), for models that are not of the default's family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["Hello, my name is John Smith and I live at 36 Johnson Street, Ellenville.",
         "Call me at 555-0134 tomorrow about the meeting with the doctor."] * 10,
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    out.chat_template = default_tokenizer.chat_template
    return out


@pytest.fixture(scope="session")
def other_tokenizer_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A 2-layer, width-64 random Llama with a tokenizer of its own (`build_other_tokenizer`)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-other"), build_other_tokenizer(default_tokenizer), seed=1)
