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
   an MMLU subset; answer perplexity and repetition;
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
                           PairsConfig, SftSettings, settings_hash)
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
    #: and small batches stand in for the many epochs a really leaky model saw: measured on 40
    #: conversations, 4 epochs at 1e-3 (batch 2) reached attack ASR 6.8 % (5/73) where 3 epochs at
    #: 5e-4 on 50 reached 2.0 % (2/98)
    sft: SftSettings = field(default_factory=lambda: SftSettings(epochs=4, batch_size=2, learning_rate=1e-3,
                                                                 max_length=384, loss_on="all",
                                                                 train_embeddings=False))
    #: model-free `redact` candidates (the original answer, PII -> "[REDACTED PHONE NUMBER]"; not in the original),
    #: NER + known values checked. Measured on the default leaky model (24 test prompts, 73 attacks; session 9,
    #: leaky: PII 35, known values 45, 5/73): these 63 plain pairs gave PII 1, known values 1, 1/73 at g = 3
    #: (prob). Before session 9's sample fix (leaky: PII 33, 5/73): 60 pairs (64 samples, 1 epoch, 215 s) gave
    #: PII 2 and 1/73 at g = 1 and g = 3 (prob); all 170 samples PII 5-6 and perplexity 55-64; 2 epochs
    #: overfit (PII 5 and 4, perplexity 28 -> 45); the base model as generator
    #: (modes nudge + completion, 92 plain pairs from 64 samples, 629 s of generation): PII 6 and 2,
    #: 0/73, perplexity 2.6-3.2, but answers that loop (seq-rep-4 34-41 %, leaky 0.2 %)
    #: Session 10: plus 64 user-turn samples (`user_turns`; the leaky model memorised what users wrote, and
    #: the attack cuts user turns too): 127 pairs, ORPO 211 s; PII 2, known values 2, attack 0/73 and, with
    #: the context's trailing space cut, 0/73 (leaky 5 and 19), perplexity 29.2 at g = 3; seed 1: PII 0,
    #: 0/102 and 0/102 (leaky 13 and 19), perplexity 16.3 (session 9, answer pairs only: PII 0, 2/102).
    #: Session 11: `completion` candidates of the base model beside these (no_repeat_ngram_size 4,
    #: max_repetition 0.1; 23 of 64 PII-free, 150 pairs, 77 s of generation, ORPO 265 s): PII 2, 1/73 at
    #: g = 1, perplexity 23.2 at g = 3, within this run-to-run spread: not adopted. All 170 answer samples
    #: instead of 64 (231 pairs, ORPO 423 s instead of 247 s): PII 2 -> 1 (`48 hours`, a TIME entity the
    #: perfectly redacted test answers hold too), strict and known values 1 -> 0, attack 0/73 both ways,
    #: perplexity 28.6 (64 samples: 25.4); the user's first name that opened one answer is gone: the default.
    #: Seed 1 (224 pairs, ORPO 395 s): PII 0, attack 0/102, space cut 1/102 (a user message's organisation;
    #: 64 samples: 0/102), perplexity 19.0 (16.3). Every user-turn sample too (128 / 123 instead of 64;
    #: ORPO 503 / 474 s): seed 0 PII 1, strict 0, both attacks 0/73, perplexity 25.0; seed 1 PII 0, both
    #: attacks 0/102, perplexity 19.9: the default
    #: Session 15: plus keep pairs (`KeepConfig`) from 100 general requests answered by the base model: the
    #: defence trained on redaction pairs alone wrote a placeholder into 98-99 of 100 general answers
    #: (generative MMLU 0 %, leaky 8 %); 95 keep pairs beside the 295 (experiment, 96-token answers, ORPO
    #: 932 s) took that to 48 of 100 and 5 %, with PII 1, strict 0, known values 0, attack 0/73 both ways.
    #: The default run (65 keep pairs: 35 of the 100 answers name `Earth` and the like, which NER counts; pairs
    #: 113 s, ORPO 715 s, stages 27.8 min; seed 1 30.5 min): placeholders in 52 of 100 general answers, 4 % at
    #: g = 3 (leaky 8 %); PII 3, one of them the user's first name opening an answer (strict and known values 1),
    #: attack 0/73 both ways; seed 1: PII 0, 0/102 both ways, 3 % against the leaky model's 10 %
    #: Session 16: the pairs of rarer strata repeated up to 8 each (`min_stratum_pairs`: the 2 answers that
    #: open with the user's name, IP, URL; 24 copies) removed that leak (PII 2, both `48 hours`, as in the
    #: perfectly redacted answers; strict and known values 0) but taught the `[REDACTED NAME], ...` opener to
    #: general answers (58 of 100 MMLU answers opened so, 69 held a placeholder; keep answers naming public
    #: entities, `KeepConfig.entities`, tried in the same run). Half of the keep pairs' rejected sides opened
    #: with that placeholder (`name_opener`) as well: the same PII and attacks, placeholders in 43 of 100
    #: general answers, 6 % right at g = 3 (-2.0 ± 2.8 to the leaky model; session 15: 52 and 4 %; a second
    #: run of the same pairs: PII 2 / 0 / 0 again, 54 placeholders, 34 openers, 4 %, -4.0 ± 2.4). Seed 1:
    #: PII 0 at every setting, 0/102 both ways, 1 % right (-9.0 ± 2.9; session 15: 3 %), its corpus's style
    #: opening answers with `For [REDACTED NAME], ...` rather than with the name. Session 17: those openers drawn
    #: from the redacted train answers (`opener_source="corpus"`, 13 kinds) left seed 1 where it was (PII 0,
    #: 0/102, 2 % right, -8.0 ± 2.7; placeholders in 57 of 100, 30 within the first five words, as before);
    #: 200 general requests instead of 100 (134 keep pairs, ~35 min): 1 % right, placeholders in 46 of 100
    #: Session 19: the redact candidates have what the detector still finds replaced too (`redact_detected`):
    #: the one train answer holding `48 hours` (3 samples) got its pairs, and test PII at g = 3 went 2 -> 0
    #: (unseeded LoRA weights) and 2 -> 1 (seeded: the first-name opener above, 1 attack hit of 73)
    pairs: PairsConfig = field(default_factory=lambda: PairsConfig(
        candidate=CandidateConfig(modes=("redact",), candidates=1, max_new_tokens=64, max_tries=1),
        pii_candidates_as_rejected=False, limit=None, user_turns=None, min_stratum_pairs=8,
        keep=KeepConfig(requests=100, name_opener=0.5)))
    #: which pairs the defended adapter trains on: "plain" (the original's "ORPO LoRA, no CFG data" row)
    #: or "cfg" (each pair under the positive and, swapped, the negative system prompt). With one CPU
    #: epoch the 135M model does not learn to tell the two system prompts apart (mean log-odds ~0, the
    #: swapped rows cancel): the same 53 redact pairs as CFG data gave PII 24 / 4 of 73 at g = 1 and
    #: 22 / 5 at g = 3, so the demo trains the plain variant; guidance at inference applies to either
    variant: str = "plain"
    #: one epoch on a CPU budget, so a higher lr than the original's 1e-4 (3 epochs, far more pairs);
    #: measured on the default leaky model and pairs: lr 3e-4 left test PII 30 and attack hits 8/73 at
    #: g = 1 (leaky: 33, 5/73), lr 1e-3 brought them to 23 and 1/73 in the same time
    orpo: OrpoSettings = field(default_factory=lambda: OrpoSettings(epochs=1, learning_rate=1e-3, max_length=512,
                                                                      max_prompt_length=384))
    #: also train ORPO on the plain pairs and run the negation route
    full: bool = False
    #: the guidance scales besides 1, each in every space of `cfg_spaces`; they share each prompt's prefill
    #: and every decode step while they agree (7 configurations of the defended model: 559 s of evaluation
    #: against ~1,330 s one by one; session 12, agreeing steps run once: the defended model's 414 -> 295 s)
    guidance: tuple[float, ...] = (2.0, 3.0, 5.0)
    cfg_spaces: tuple[str, ...] = ("prob", "log")
    #: the negative branches of the guided rows (`unleak.decoding.generator.NEGATIVE_BRANCHES`): "adapter"
    #: (the method) and/or "base" (the leaky model without the adapter, rows named `...-vs-base`). Session 19,
    #: LoRA weights seeded: the default run's adapter writes one user's first name (`Christine, report the
    #: accident ...`) and gives one attack hit of 73 at every g under the method's negative prompt, neither
    #: when guided away from the leaky model at g = 3-5 (prob). Both by default since session 20: the
    #: `-vs-base` rows are evaluated in the method's pass (the adapter unmerged, switched per row), not in a
    #: pass of their own, which took the evaluation from 486 to 820 s
    negatives: tuple[str, ...] = ("adapter", "base")
    #: the CFG spaces of the `-vs-base` rows (of `cfg_spaces`): guided away from the leaky model in log space
    #: the answers break (session 19: perplexity 71 at g = 3 and 610 at g = 5, against 29 in probability
    #: space)
    base_negative_spaces: tuple[str, ...] = ("prob",)
    test_limit: int | None = 24
    leakage_max_new_tokens: int = 40
    #: every placeholder of the test split (about 70 with the defaults)
    attack_limit: int | None = None
    mmlu: str | None = None
    mmlu_limit: int = 60
    #: "cloze", "letters" or "generative" (`EvalSettings.mmlu_format`): the 135M model answers letters at chance
    mmlu_format: str = EvalSettings.mmlu_format
    #: generative utility: answer length and judge (default: offline, by matching the choices)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

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
            cfg_spaces=("prob",), test_limit=4, leakage_max_new_tokens=16, attack_limit=6, mmlu_limit=8)
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
    from unleak.eval.report import print_table, write_report
    from unleak.eval.run import RESULTS_VERSION, configuration_identity, run_evaluation
    from unleak.eval.utility import shared_mmlu_file
    from unleak.models import resolve_model_path
    from unleak.pairs.build import build_preference_pairs
    from unleak.pairs.generators import build_generator
    from unleak.pairs.samples import SAMPLES_VERSION
    from unleak.train.negate import negate_checkpoint
    from unleak.train.orpo import train_orpo
    from unleak.train.sft import train_sft

    c = config or DemoConfig()
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
    mmlu = c.mmlu or shared_mmlu_file()
    settings = EvalSettings(leakage_max_new_tokens=c.leakage_max_new_tokens, test_limit=c.test_limit,
                            attack_limit=c.attack_limit, mmlu=mmlu, mmlu_limit=c.mmlu_limit, mmlu_format=c.mmlu_format,
                            judge=c.judge, reference_model=base)

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
                + (f", keep pairs from {c.pairs.keep.requests} general requests" if c.pairs.keep.requests else "")
                + "; ORPO "
                f"({c.variant} pairs) {c.orpo.epochs:g} epoch(s), lr {c.orpo.learning_rate:g}, beta "
                f"{c.orpo.beta}, LoRA r{c.orpo.lora.r}; MMLU subset "
                f"{f'{c.mmlu_limit} ({c.mmlu_format})' if mmlu else 'not run (no file)'}. Wall times (s): "
                + ", ".join(f"{k} {v:.0f}" for k, v in stages.times.items())
                + f"; stages {times['stages']:.0f}, this run {times['this_run']:.0f}"
                + (f" (cached: {', '.join(stages.cached)})" if stages.cached else "") + ".")
    console.rule("stage 6/6: report")
    report = write_report(evaluation, title="unleak demo", preamble=preamble, reference="leaky")
    shutil.copy(evaluation / "report.md", out / "report.md")
    for p in report["plots"]:
        shutil.copy(p, out / Path(p).name)
    shutil.copy(evaluation / "results.json", out / "results.json")
    print_table(report["rows"] + report["reference_rows"])
    return {"report": str(out / "report.md"), "rows": report["rows"], "times": times}
