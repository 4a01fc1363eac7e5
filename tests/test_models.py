"""Loading models through the real code: the tiny fixture model, the embedded default, errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from unleak import models
from unleak.errors import UnleakError
from unleak.models import load_model, load_tokenizer, peft_wrapping


def greedy_tokens(model, tokenizer, n: int = 8) -> list[int]:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_tiny_model_loads_fp32_on_cpu_and_generates(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    tokens = greedy_tokens(model, tokenizer)
    assert len(tokens) == 8
    assert tokens == greedy_tokens(model, tokenizer)  # greedy is deterministic


def test_default_dtype_follows_the_hardware_unless_overridden(monkeypatch):
    monkeypatch.delenv("UNLEAK_DTYPE", raising=False)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.default_dtype("cpu") == torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)  # AMX-BF16: bf16 is not emulated
    assert models.default_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("UNLEAK_DTYPE", "fp32")
    assert models.default_dtype("cpu") == torch.float32 and models.default_dtype("cuda:0") == torch.float32
    monkeypatch.setenv("UNLEAK_DTYPE", "int3")
    with pytest.raises(UnleakError, match="unknown dtype"):
        models.default_dtype("cpu")


def test_runtime_environment_names_the_device_the_dtype_and_the_libraries(monkeypatch):
    import transformers

    monkeypatch.setenv("UNLEAK_DTYPE", "bf16")
    env = models.runtime_environment()
    assert env["dtype"] == "bfloat16" and env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__ and env["threads"] == torch.get_num_threads()
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = {"device": "cpu", "device_name": "x86_64", "dtype": "float32", "threads": 2, "torch": "2.13.0",
           "transformers": "5.24.0", "trl": "1.16.0", "peft": None}
    assert models.environment_line(cpu) == ("cpu (x86_64, 2 threads), float32; torch 2.13.0, transformers 5.24.0, "
                                            "TRL 1.16.0")  # a library not installed is left out
    gpu = {**cpu, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16", "peft": "0.21.0"}
    assert models.environment_line(gpu) == ("cuda (NVIDIA H100 80GB HBM3), bfloat16; torch 2.13.0, "
                                            "transformers 5.24.0, TRL 1.16.0, PEFT 0.21.0")


def test_dtype_override(tiny_model_dir):
    assert load_model(str(tiny_model_dir), device="cpu", dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(UnleakError, match="unknown dtype"):
        load_model(str(tiny_model_dir), device="cpu", dtype="int3")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(UnleakError, match="model path not found"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(UnleakError, match="is a file"):
        load_model(str(tmp_path / "file.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnleakError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnleakError, match="cannot load 'unleak-test/no-such-model'"):
        load_tokenizer("unleak-test/no-such-model")


def test_tokenizer_without_chat_template_is_rejected(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(UnleakError, match="no chat template"):
        load_tokenizer(str(tmp_path))
    assert load_tokenizer(str(tmp_path), require_chat_template=False) is not None


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(UnleakError, match="adapter not found"):
        load_model(str(tiny_model_dir), adapter=tmp_path / "no-adapter")


def test_merged_adapter_gives_the_adapter_outputs(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with peft_wrapping():
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # a zero B would make the adapter a no-op
    peft.save_pretrained(tmp_path / "adapter")
    plain = load_model(str(tiny_model_dir))
    ids = torch.tensor([[1, 5, 9, 42, 7]], device=plain.device)
    with warnings.catch_warnings():  # PEFT's read of a deprecated transformers attribute is not shown to users
        warnings.simplefilter("error", FutureWarning)
        unmerged = load_model(str(tiny_model_dir), adapter=tmp_path / "adapter")
    merged = load_model(str(tiny_model_dir), adapter=tmp_path / "adapter", merge=True)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel) and not merged.training
    with torch.inference_mode():
        base, want, got = (m(input_ids=ids).logits for m in (plain, unmerged, merged))
    assert not torch.allclose(base, want, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_materialisation_is_atomic_and_idempotent(tmp_path, monkeypatch):
    """A crash while writing leaves no checkpoint; a finished one is never rebuilt."""
    monkeypatch.setenv("UNLEAK_CACHE", str(tmp_path))
    calls = []

    def crashing(gguf, out):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(models, "_materialise_gguf", crashing)
    with pytest.raises(RuntimeError):
        models.prepare_default_model()
    target = models.default_model_dir()
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []

    def writing(gguf, out):
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"ok": True}))

    monkeypatch.setattr(models, "_materialise_gguf", writing)
    assert models.prepare_default_model() == target
    assert (target / "config.json").is_file()
    monkeypatch.setattr(models, "_materialise_gguf", crashing)
    assert models.prepare_default_model() == target  # cached: not rebuilt
    assert len(calls) == 2


@pytest.mark.slow
def test_default_model_info_and_greedy_generation():
    info = models.model_info("default", device="cpu")
    assert round(info.parameters / 1e6, 1) == 134.5
    assert info.dtype == "float32" and info.chat_template and info.architecture == "LlamaForCausalLM"
    model, tokenizer = load_model("default", device="cpu"), load_tokenizer("default")
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    tokens = greedy_tokens(model, tokenizer)
    assert len(tokens) == 8
    assert "Paris" in tokenizer.decode(tokens)
