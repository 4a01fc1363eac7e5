"""The `unleak` command line: parses flags into a config and calls one library function.

Each stage is a subcommand: models, corpus, pii, pairs, train, negate,
generate, eval, serve, demo. Errors in the input (`UnleakError`) print one
line and exit with status 2; nothing here holds logic of its own.
"""

from __future__ import annotations

import json
import sys
from typing import NoReturn

import typer
from rich.console import Console

from unleak.errors import UnleakError

console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    help="unleak: train, measure and serve a defence that stops a chat LLM from revealing memorised PII.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and inspect base models (the embedded default or any HF model).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")


def _not_built(stage: str, issue: int) -> NoReturn:
    console.print(f"[red]unleak {stage}: this stage is not built yet (tracked in issue #{issue}).[/red]")
    raise typer.Exit(3)


# --- models -----------------------------------------------------------------

@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Re-materialise even if cached.")) -> None:
    """Materialise the embedded SmolLM2-135M-Instruct once into a safetensors checkpoint; print its path."""
    from unleak.models import prepare_default_model

    print(prepare_default_model(force=force))


@models_app.command("info")
def models_info(
    name: str = typer.Argument("default", help="'default', a local checkpoint directory or a hub id."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: str = typer.Option(None, help="fp32, bf16 or fp16 (default: by hardware)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print parameters, dtype, device and chat-template presence of a model."""
    from unleak.models import model_info

    info = model_info(name, device=device, dtype=dtype)
    if as_json:
        print(json.dumps(info.as_dict()))
        return
    print(f"name:          {info.name}")
    print(f"path:          {info.path}")
    print(f"architecture:  {info.architecture}")
    print(f"parameters:    {info.parameters / 1e6:.1f}M ({info.parameters:,})")
    print(f"dtype:         {info.dtype}")
    print(f"device:        {info.device}")
    print(f"context:       {info.context_length}")
    print(f"chat template: {'yes' if info.chat_template else 'no'}")


# --- stages not built yet ------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def corpus() -> None:
    """Conversations: LLM-PC reader, synthetic PII-rich corpus, splits, stats."""
    _not_built("corpus", 4)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pii() -> None:
    """PII detection: scan texts, score detectors against ground truth."""
    _not_built("pii", 4)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pairs() -> None:
    """Preference pairs with NER-verified PII-free chosen answers (plain and CFG variant)."""
    _not_built("pairs", 6)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Training: leaky SFT, ORPO + LoRA unlearning, adapter merge."""
    _not_built("train", 7)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def negate() -> None:
    """Forgetting via negation: base - alpha * (tuned - base)."""
    _not_built("negate", 7)


@app.command()
def generate(
    model: str = typer.Option("default", help="'default', a checkpoint directory or a hub id."),
    adapter: str = typer.Option(None, help="PEFT adapter directory to attach."),
    prompt: str = typer.Option(None, help="One prompt: a user message or a full chat-formatted string."),
    in_file: str = typer.Option(None, "--in", help='JSONL of {"prompt": str} or {"messages": [...]} rows.'),
    guidance_scale: float = typer.Option(3.0, help="CFG scale g (1 = plain decoding, no negative branch)."),
    cfg_space: str = typer.Option("prob", help="'prob' (probability space) or 'log' (as transformers)."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding (the default unless --temperature > 0)."),
    temperature: float = typer.Option(0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, help="Top-k sampling (0 = off)."),
    seed: int = typer.Option(None, help="Seed for sampling."),
    max_new_tokens: int = typer.Option(256, help="Tokens to generate at most."),
    stop: list[str] = typer.Option(None, help="Stop string (repeatable)."),
    batch_size: int = typer.Option(16, help="Requests decoded together."),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: by hardware)."),
    dtype: str = typer.Option(None, help="fp32, bf16, fp16 (default: by hardware)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per request, in input order."),
) -> None:
    """Generate with classifier-free guidance between the privacy system prompts."""
    from unleak.config import GuidanceConfig, SamplingConfig
    from unleak.decoding.api import read_generation_requests, run_generate
    from unleak.decoding.generator import GenerationRequest

    if (prompt is None) == (in_file is None):
        raise UnleakError("give exactly one of --prompt or --in")
    if greedy and temperature > 0:
        raise UnleakError("--greedy and --temperature > 0 contradict each other")
    guidance = GuidanceConfig(guidance_scale, cfg_space)  # type: ignore[arg-type]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k, seed=seed, stop=tuple(stop or ()))
    if prompt is not None:
        requests = [GenerationRequest(prompt=prompt, guidance=guidance, sampling=sampling)]
    else:
        requests = read_generation_requests(in_file, guidance, sampling)
    events = run_generate(requests, model=model, adapter=adapter, device=device, dtype=dtype,
                          batch_size=batch_size)
    results = {}
    for event in events:
        if not as_json and len(requests) == 1:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        if event.result is not None:
            results[event.index] = event.result
    if as_json:
        for i in range(len(requests)):
            print(json.dumps(results[i].as_dict(), ensure_ascii=False))
    elif len(requests) == 1:
        print()
    else:
        for i in range(len(requests)):
            print(f"### {i} ({results[i].finish_reason})\n{results[i].text}\n")


@app.command(name="eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_() -> None:
    """Evaluation: leakage, extraction attack, utility, fluency, report."""
    _not_built("eval", 8)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve() -> None:
    """OpenAI-compatible server with guidance and adapter policies per API key."""
    _not_built("serve", 9)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo() -> None:
    """Run every stage end to end on the embedded default."""
    _not_built("demo", 10)


def main() -> None:
    """Console-script entry point: run the app, turning UnleakError into one line and exit status 2."""
    try:
        app()
    except UnleakError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
