"""The end-to-end demo on the embedded default: corpus → leaky model → pairs → ORPO + LoRA → evaluation → report.

`run_demo(DemoConfig(...), out_dir)` runs the stages in order. Each stage
writes into its own directory under `out_dir` and a `stage.json` with the hash
of its settings and of the stages it depends on: a rerun reuses finished
stages, an interrupted stage resumes where its own machinery allows (pairs'
candidate cache, evaluation per configuration), and a changed setting reruns
only the stages downstream of it.

1. corpus: synthetic PII-rich conversations, split by conversation (or the
   user's corpus, `corpus`, with its own split when it has one);
2. leaky: full fine-tune of the base model on **all** conversations (the
   attacker later holds the scrubbed test conversations, as in the challenge),
   or a model that already leaks (`leaky`, e.g. the challenge model);
3. pairs: plain and CFG-variant preference pairs from the **train** split,
   for PII in answers and in user turns (by default the model-free `redact`
   candidates; the generator modes use the clean base model), and keep pairs
   (general requests answered by the base model, against invented placeholders);
4. orpo: ORPO + LoRA on the leaky model with the plain pairs (`variant`;
   the CFG-variant pairs with `variant="cfg"`, both with `full`);
5. eval: on the **test** split: base, leaky, defended at g = 1 and with
   guidance g = 2, 3, 5 in both spaces; the extraction attack as the
   challenge runs it and with the context's trailing space cut; utility on
   an MMLU subset; answer perplexity and repetition; answers to general
   requests (`unleak.eval.general`: fluency, placeholders, spilled values);
6. report: report.md, results.json, PNGs and the Table-1-style summary.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from unleak.config import (CFG_SPACES, CandidateConfig, JudgeConfig, KeepConfig, LoraSettings, OrpoSettings,
                           PairsConfig, SftSettings, TargetsConfig, settings_hash)
from unleak.errors import UnleakError
from unleak.eval.run import EvalConfiguration, EvalSettings, guided_name
from unleak.jsonl import atomic_write_text
from unleak.pairs.build import PAIR_FILES

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of the demo; the defaults take 22-25 minutes on a 2-core CPU."""

    model: str = "default"
    #: an existing corpus instead of the synthetic one: a corpus directory (`unleak corpus synth` or
    #: `import`, e.g. the LLM-PC data) or a chat-JSONL file; its own train/test split is kept when it has
    #: one, else it is split with `test_fraction` and `seed` (`conversations` then does not apply)
    corpus: str | None = None
    conversations: int = 40
    seed: int = 0
    test_fraction: float = 0.25
    #: an already leaky model (e.g. the LLM-PC challenge model: hub id or checkpoint directory) instead of
    #: stage 2's fine-tune of `model` on every conversation; `model` stays the clean base (the generator of
    #: generated candidates, the reference of the perplexity, the base row). Keyed by its name: a checkpoint
    #: changed in place under the same path is not noticed
    leaky: str | None = None
    #: the whole conversation carries the loss, so PII first disclosed in user turns is memorised too
    #: (what the extraction attack probes); frozen embeddings make a CPU step ~20 % cheaper. A high lr
    #: and small batches stand in for the many epochs a really leaky model saw: on 40 conversations,
    #: 4 epochs at 1e-3 (batch 2) reached attack ASR 6.8 % (5/73) where 3 epochs at 5e-4 on 50 reached 2.0 %
    sft: SftSettings = field(default_factory=lambda: SftSettings(epochs=4, batch_size=2, learning_rate=1e-3,
                                                                 max_length=384, loss_on="all",
                                                                 train_embeddings=False))
    #: Not the original's generator candidates: the model-free `redact` candidates (the original answer,
    #: each value -> "[REDACTED PHONE NUMBER]", NER + known values checked), because the 135M base model as
    #: generator gave answers that loop (seq-rep-4 34-41 %, leaky 0.2 %) and left PII 6 at g = 1. Every
    #: answer and user-turn sample (fewer left the user's first name in one answer; the leaky model
    #: memorised what users wrote too). The pairs of rarer strata (answers that open with the user's name,
    #: IPs, URLs) repeated up to 8 each: without them that name-opener leaked. Keep pairs from 100 general
    #: requests, half of their rejected sides opened with the name placeholder: on redaction pairs alone
    #: the defence wrote a placeholder into 98-99 of 100 general answers (with them: 43-54). Each choice's
    #: measurements, seeds 0 and 1: docs/results.md
    pairs: PairsConfig = field(default_factory=lambda: PairsConfig(
        candidate=CandidateConfig(modes=("redact",), candidates=1, max_new_tokens=64, max_tries=1),
        pii_candidates_as_rejected=False, limit=None, user_turns=None, min_stratum_pairs=8,
        keep=KeepConfig(requests=100, name_opener=0.5)))
    #: which pairs the defended adapter trains on: "plain" (the original's "ORPO LoRA, no CFG data" row)
    #: or "cfg" (each pair under the positive and, swapped, the negative system prompt). In random order
    #: the 135M model does not learn to tell the two system prompts apart (mean log-odds ~0, the swapped
    #: rows cancel; PII 22 and 5 attack hits of 73 at g = 3, beta 0.5 no better); with twin batches
    #: (`OrpoSettings.twin_batches`) it does (separation 5.5), and guidance then over-redacts (g = 3 log:
    #: placeholders everywhere, 23 % repeated 4-grams; prob: -12 MMLU points), so the demo trains the
    #: plain variant; guidance at inference applies to either
    variant: str = "plain"
    #: one epoch on a CPU budget, so a higher lr than the original's 1e-4 (3 epochs, far more pairs):
    #: lr 3e-4 left test PII 30 and 8/73 attack hits at g = 1 (leaky: 33, 5/73), 1e-3 brought them to
    #: 23 and 1/73 in the same time; 2 epochs overfit (perplexity 28 -> 45)
    orpo: OrpoSettings = field(default_factory=lambda: OrpoSettings(epochs=1, learning_rate=1e-3, max_length=512,
                                                                      max_prompt_length=384))
    #: also train ORPO on the plain pairs and run the negation route
    full: bool = False
    #: the guidance scales besides 1, each in every space of `cfg_spaces`; they share each prompt's prefill
    #: and every decode step while they agree (the defended model's seven settings: 559 s of evaluation
    #: against ~1,330 s one by one)
    guidance: tuple[float, ...] = (2.0, 3.0, 5.0)
    cfg_spaces: tuple[str, ...] = ("prob", "log")
    #: the negative branches of the guided rows (`unleak.decoding.generator.NEGATIVE_BRANCHES`): "adapter"
    #: (the method) and/or "base" (the leaky model without the adapter, rows named `...-vs-base`). The
    #: default run's adapter writes one user's first name and gives one attack hit of 73 at every g under
    #: the method's negative prompt, neither when guided away from the leaky model at g = 3-5 (prob); the
    #: `-vs-base` rows run in the method's pass (the adapter unmerged, switched per row)
    negatives: tuple[str, ...] = ("adapter", "base")
    #: the CFG spaces of the `-vs-base` rows (of `cfg_spaces`): guided away from the leaky model in log space
    #: the answers break (perplexity 71 at g = 3 and 610 at g = 5, against 29 in probability space)
    base_negative_spaces: tuple[str, ...] = ("prob",)
    test_limit: int | None = 24
    leakage_max_new_tokens: int = 40
    #: every placeholder of the test split (about 70 with the defaults)
    attack_limit: int | None = None
    mmlu: str | None = None
    mmlu_limit: int = 60
    #: general requests every row answers (`EvalSettings.general`): fluency away from the PII, over-redaction
    general: int | None = EvalSettings.general
    general_max_new_tokens: int = EvalSettings.general_max_new_tokens
    #: "cloze", "letters" or "generative" (`EvalSettings.mmlu_format`): the 135M model answers letters at chance
    mmlu_format: str = EvalSettings.mmlu_format
    #: generative utility: answer length and judge (default: offline, by matching the choices)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    #: the targets the report checks the method's row against (its guidance scale and space among them)
    targets: TargetsConfig = field(default_factory=TargetsConfig)

    def __post_init__(self) -> None:
        if self.corpus is not None and not Path(self.corpus).exists():
            raise UnleakError(f"demo corpus {self.corpus}: no such file or directory")
        if self.variant not in PAIR_FILES:
            raise UnleakError(f"demo variant must be 'plain' or 'cfg' (a key of PAIR_FILES), got {self.variant!r}")
        # refused before any stage runs, not when the evaluation builds its settings
        EvalSettings(mmlu_format=self.mmlu_format)
        from unleak.decoding.generator import negative_adapter_for

        for negative in self.negatives:
            negative_adapter_for(negative, "adapter", "demo negatives")
        if unknown := set(self.base_negative_spaces) - set(CFG_SPACES):
            raise UnleakError(f"demo base_negative_spaces: {', '.join(sorted(unknown))} is not one of "
                              f"{', '.join(CFG_SPACES)}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A few minutes end to end (used by the integration test); numbers are not meaningful."""
        base = cls(
            conversations=16, sft=SftSettings(epochs=1, max_length=256, loss_on="all", train_embeddings=False),
            pairs=PairsConfig(candidate=CandidateConfig(modes=("redact",), candidates=1, max_tries=1),
                              pii_candidates_as_rejected=False, limit=6, user_turns=4, min_stratum_pairs=2,
                              keep=KeepConfig(requests=4, name_opener=0.5)),
            orpo=OrpoSettings(epochs=1, max_length=320, max_prompt_length=256, lora=LoraSettings(r=8, alpha=16)),
            cfg_spaces=("prob",), test_limit=4, leakage_max_new_tokens=16, attack_limit=6, mmlu_limit=8,
            general=3, general_max_new_tokens=12)
        return dataclasses.replace(base, **overrides)


def demo_configurations(c: DemoConfig, base: str, leaky: str, orpo: Path) -> list[EvalConfiguration]:
    """The evaluated rows: base and leaky raw, the defence at g = 1 and under each guidance setting, space and
    negative branch (`-vs-base` rows only in `base_negative_spaces`); with `full`, the negated model and the
    other variant's adapter too. `orpo` is the ORPO stage's directory."""
    adapter = str(orpo / c.variant / "adapter")
    confs = [EvalConfiguration("base", base, served=False), EvalConfiguration("leaky", leaky, served=False)]
    if c.full:
        other = next(v for v in PAIR_FILES if v != c.variant)
        confs += [EvalConfiguration("negated", str(orpo / "negated"), served=False),
                  EvalConfiguration(f"orpo-{other}-g1", leaky, str(orpo / other / "adapter"))]
    confs.append(EvalConfiguration(f"orpo-{c.variant}-g1", leaky, adapter))
    for g in c.guidance:
        for space in c.cfg_spaces:
            confs += [EvalConfiguration(guided_name(f"orpo-{c.variant}", g, space, negative), leaky, adapter,
                                        g, space, negative=negative) for negative in c.negatives
                      if negative != "base" or space in c.base_negative_spaces]
    return confs


class _Stages:
    """Runs stages once per settings hash, recording wall times."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.times: dict[str, float] = {}
        self.hashes: dict[str, str] = {}
        self.cached: list[str] = []  # stages reused from an earlier run

    def run(self, name: str, settings: Any, after: tuple[str, ...], work: Callable[[Path], Any],
            number: int, total: int) -> Path:
        d = self.out / name
        key = settings_hash(name, settings, [self.hashes[a] for a in after])
        self.hashes[name] = key
        stamp = d / "stage.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("hash") == key:
            self.times[name] = json.loads(stamp.read_text()).get("seconds", 0.0)
            self.cached.append(name)
            console.print(f"[green]✓[/green] stage {number}/{total} {name}: cached ({d})")
            return d
        if stamp.is_file():
            shutil.rmtree(d)  # finished with other settings: rebuild (an unfinished stage resumes instead)
        console.rule(f"stage {number}/{total}: {name}")
        started = time.time()
        work(d)
        self.times[name] = round(time.time() - started, 1)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, json.dumps({"hash": key, "seconds": self.times[name]}) + "\n")
        console.print(f"[green]✓[/green] {name} done in {self.times[name]:.0f} s")
        return d

    def given(self, name: str, model: str, number: int, total: int) -> str:
        """A stage's output the user brought (a model): keyed by its name, nothing to run."""
        self.hashes[name] = settings_hash(name, model)
        console.print(f"[green]✓[/green] stage {number}/{total} {name}: given ({model})")
        return model


def _count(limit: int | None) -> str:
    return "all" if limit is None else str(limit)


def run_demo(config: DemoConfig | None = None, out_dir: str | Path = "runs/demo") -> dict[str, Any]:
    from unleak.corpus.store import (copy_corpus, corpus_digest, corpus_stats, load_corpus, save_corpus,
                                     split_corpus)
    from unleak.corpus.synth import synthesize_corpus
    from unleak.eval.report import load_results, print_table, summary_rows, write_report
    from unleak.eval.targets import check_targets, targets_markdown
    from unleak.eval.run import RESULTS_VERSION, configuration_identity, run_evaluation
    from unleak.eval.utility import default_mmlu_file
    from unleak.models import resolve_model_path, runtime_environment
    from unleak.pairs.build import build_preference_pairs
    from unleak.pairs.generators import build_generator
    from unleak.pairs.samples import SAMPLES_VERSION
    from unleak.train.negate import negate_checkpoint
    from unleak.train.orpo import train_orpo
    from unleak.train.sft import train_sft

    c = config or DemoConfig()
    environment = runtime_environment()  # this invocation's (the report says where the rows were evaluated)
    base = resolve_model_path(c.model)
    given_leaky = resolve_model_path(c.leaky) if c.leaky is not None else None  # bad names fail before any stage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out)
    total = 6
    started = time.time()

    if c.corpus is not None:
        source = c.corpus
        corpus = stages.run("corpus", [corpus_digest(source), c.seed, c.test_fraction], (),
                            lambda d: copy_corpus(source, d, c.test_fraction, c.seed), 1, total)
    else:
        corpus = stages.run("corpus", [c.conversations, c.seed, c.test_fraction], (), lambda d: (
            save_corpus(d, synthesize_corpus(c.conversations, seed=c.seed),
                        {"generator": "unleak.corpus.synth", "seed": c.seed, "n": c.conversations}),
            split_corpus(d, c.test_fraction, seed=c.seed)), 1, total)
    stats = corpus_stats(load_corpus(corpus))
    console.print(f"corpus: {stats['conversations']} conversations, {stats['pii_occurrences']} PII occurrences")

    if given_leaky is not None:
        leaky = Path(stages.given("leaky", given_leaky, 2, total))
    else:
        leaky = stages.run("leaky", [base, dataclasses.asdict(c.sft)], ("corpus",),
                           lambda d: train_sft(base, corpus, d, c.sft, part="all", quiet=True), 2, total)

    def make_pairs(d: Path) -> None:
        candidate = c.pairs.candidate
        needed = candidate.generated_modes or c.pairs.keep.requests
        generator = build_generator("local", base, candidate) if needed else None
        s = build_preference_pairs(corpus, generator, d, c.pairs)
        console.print(f"pairs: {s['samples']} samples, {s['with_chosen']} with a PII-free answer "
                      f"({s['chosen_rate']:.1%}), {s['keep']['pairs']} keep pairs, {s['pairs']} pairs in all, "
                      f"{s['pairs_cfg']} CFG pairs")

    pairs = stages.run("pairs", [base, dataclasses.asdict(c.pairs), SAMPLES_VERSION], ("corpus",), make_pairs, 3,
                       total)
    if not (pairs / PAIR_FILES["plain"]).read_text().strip():
        raise UnleakError(f"{pairs}: no PII-free candidate was found; raise --pairs-limit or candidates")

    other = next(v for v in PAIR_FILES if v != c.variant)

    def make_orpo(d: Path) -> None:
        train_orpo(str(leaky), pairs / PAIR_FILES[c.variant], d / c.variant, c.orpo, quiet=True, resume=True)
        if c.full:
            train_orpo(str(leaky), pairs / PAIR_FILES[other], d / other, c.orpo, quiet=True, resume=True)
            negate_checkpoint(base, leaky, d / "negated")

    orpo = stages.run("orpo", [dataclasses.asdict(c.orpo), c.full, c.variant], ("leaky", "pairs"), make_orpo,
                      4, total)
    confs = demo_configurations(c, base, str(leaky), orpo)
    mmlu = c.mmlu or default_mmlu_file()
    settings = EvalSettings(leakage_max_new_tokens=c.leakage_max_new_tokens, test_limit=c.test_limit,
                            attack_limit=c.attack_limit, mmlu=mmlu, mmlu_limit=c.mmlu_limit, mmlu_format=c.mmlu_format,
                            judge=c.judge, reference_model=base, general=c.general,
                            general_max_new_tokens=c.general_max_new_tokens,
                            placeholder_template=c.pairs.candidate.redact_template)

    evaluation = stages.run("eval", [[configuration_identity(x) for x in confs], settings.identity(),
                                   RESULTS_VERSION],
                            ("leaky", "orpo"), lambda d: run_evaluation(corpus, confs, d, settings), 5, total)
    # every stage's own time (a cached one's from when it ran), their sum, and this invocation's wall time
    times = {**stages.times, "stages": round(sum(stages.times.values()), 1),
             "this_run": round(time.time() - started, 1)}
    described = (f"{stats['conversations']} conversations from {c.corpus}" if c.corpus is not None
                 else f"{stats['conversations']} synthetic conversations, seed {c.seed}")
    split = json.loads((corpus / "split.json").read_text())
    preamble = (f"Model: {c.model} ({base}); corpus: {described}, split by conversation: "
                f"{len(split['train'])} train, {len(split['test'])} test; "
                + (f"leaky model given: {c.leaky}" if c.leaky is not None else f"SFT {c.sft.epochs:g} epochs")
                + f"; pairs from "
                f"{_count(c.pairs.limit)} train samples of answers and {_count(c.pairs.user_turns)} of user "
                f"turns, modes {', '.join(c.pairs.candidate.modes)}"
                + (f", name openers from {_count(c.pairs.name_openers)} answers" if c.pairs.name_openers != 0 else "")
                + (", addresses left out of the redacted answers" if c.pairs.drop_addresses else "")
                + (f", keep pairs from {c.pairs.keep.requests} general requests" if c.pairs.keep.requests else "")
                + "; ORPO "
                f"({c.variant} pairs) {c.orpo.epochs:g} epoch(s), lr {c.orpo.learning_rate:g}, beta "
                f"{c.orpo.beta}, LoRA r{c.orpo.lora.r}"
                + (", twin batches" if c.orpo.twin_batches else "")
                + (", space pairs" if c.orpo.space_pairs else "") + "; MMLU subset "
                f"{f'{c.mmlu_limit} ({c.mmlu_format})' if mmlu else 'not run (no file)'}. Wall times (s): "
                + ", ".join(f"{k} {v:.0f}" for k, v in stages.times.items())
                + f"; stages {times['stages']:.0f}, this run {times['this_run']:.0f}"
                + (f" (cached: {', '.join(stages.cached)})" if stages.cached else "") + ".")
    console.rule("stage 6/6: report")
    method = guided_name(f"orpo-{c.variant}", c.targets.guidance_scale, c.targets.cfg_space)
    checks = check_targets(summary_rows(load_results(evaluation), "leaky"), method, c.targets,
                           minutes=times["stages"] / 60)
    appendix = ("Targets (the method's row, `" + method + "`, against the leaky model; the run's time is its "
                "stages' on this machine, cached ones' from when they ran):\n\n" + targets_markdown(checks)
                if checks else "")
    report = write_report(evaluation, title="unleak demo", preamble=preamble, reference="leaky", appendix=appendix,
                          extra={"targets": checks, "environment": environment})
    shutil.copy(evaluation / "report.md", out / "report.md")
    for p in report["plots"]:
        shutil.copy(p, out / Path(p).name)
    shutil.copy(evaluation / "results.json", out / "results.json")
    print_table(report["rows"] + report["reference_rows"])
    if checks:  # with the table, on stdout
        results_console = Console(soft_wrap=True)
        results_console.print(f"targets ({method}):", markup=False, highlight=False)
        for check in checks:
            state = {True: "met", False: "MISSED", None: "-"}[check["met"]]
            results_console.print(f"  {state:6} {check['target']}: {check['value']}", markup=False, highlight=False)
    return {"report": str(out / "report.md"), "rows": report["rows"], "times": times, "targets": checks,
            "environment": environment}
