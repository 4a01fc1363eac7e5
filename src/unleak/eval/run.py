"""`run_evaluation`: every configuration (model, adapter, guidance) on leakage, attack, utility and fluency
(on the test prompts, and on general requests with their over-redaction: `unleak.eval.general`).

A configuration's results are written atomically to `OUT/configs/NAME.json`
with a hash of its settings and of `RESULTS_VERSION`, and every answer it gave
(test and attack prompts, with the PII found and whether the attack hit) to
`OUT/answers/NAME.jsonl` just before, so a row of the table can be checked
answer by answer; a rerun skips
configurations already done with the same settings (resumable) and recomputes
those from before a metric was added; within a model's configurations, what
was generated or scored (multiple choice) before an interruption is journaled
(`eval.journal`) and not done again. The configurations of one model
(model, adapter, served) are evaluated together: the model is loaded once,
every test and attack prompt is prefilled once for all their guidance
settings (`CFGGenerator.generate_grouped`), the attack's two variants in one
pass so that prompts that start alike share their prefill (`run_attacks`),
and each multiple-choice question
is scored once per system prompt (both in one pass for cloze), the branches
then mixed for each setting: utility is measured under guidance, as the model
is served (a served
configuration sees the questions behind its system prompt, as it sees the
attack). Adapters are merged into the
weights for evaluation (same outputs, ~1.25x faster decoding on CPU, measured
on the demo's 24 test prompts with equal answers), unless some of the model's
rows guide away from it without the adapter (`negative="base"`): then the
adapter stays unmerged and is switched per row, and those rows share the pass
with the method's."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from unleak.config import (MC_FORMATS, AttackConfig, CandidateConfig, EndpointConfig, GuidanceConfig, JudgeConfig,
                           PIIConfig, settings_hash)
from unleak.errors import UnleakError
from unleak.jsonl import atomic_write_jsonl, atomic_write_text
from unleak.pairs.samples import SAMPLES_VERSION

#: bump when a result gains or changes a metric: cached configurations are then recomputed
#: (2: the fluency's repetition rate; 3: every answer saved in answers/NAME.jsonl; 4: known values;
#: 5: the stripped-space attack; 6: utility under guidance, behind the serving system prompt; 7: cloze
#: utility by default; 8: answers to general requests)
RESULTS_VERSION = 8


@dataclass(frozen=True)
class EvalConfiguration:
    """One row of the results table."""

    name: str
    model: str
    adapter: str | None = None
    guidance_scale: float = 1.0
    cfg_space: str = "prob"
    #: attack prompts behind the serving system prompt (defences) or raw (the baseline on a bare model)
    served: bool = True
    #: what the guided negative rows run on (`unleak.decoding.generator.NEGATIVE_BRANCHES`)
    negative: str = "adapter"
    #: a deployment evaluated through its OpenAI-compatible API, as served (`model`: its tokenizer, for the
    #: attack's chat template); None: `model` (+ `adapter`) loaded here
    endpoint: EndpointConfig | None = None

    def __post_init__(self) -> None:
        from unleak.decoding.generator import negative_adapter_for

        negative_adapter_for(self.negative, self.adapter, self.name)
        if self.endpoint is not None and (self.adapter is not None or self.guidance_scale != 1 or not self.served):
            raise UnleakError(f"{self.name}: an endpoint is evaluated as served, with the adapter and guidance "
                              "its server sets (with unleak serve, the API key's policy): give neither")


def guided_name(label: str, guidance_scale: float, cfg_space: str, negative: str = "adapter") -> str:
    """A guided configuration's row name: `LABEL-g3-prob`, with `-vs-base` when the negative rows run without
    the adapter."""
    return f"{label}-g{guidance_scale:g}-{cfg_space}" + ("" if negative == "adapter" else f"-vs-{negative}")


def configuration_identity(conf: EvalConfiguration) -> dict[str, Any]:
    """What a configuration's cached results are keyed by: the method's negative branch and a missing
    endpoint are left out, so results from before the fields existed stay valid. An endpoint counts by URL,
    model and a digest of its API key (with unleak serve, the key picks the policy), not by how it is called."""
    from unleak.decoding.endpoint import endpoint_key_id

    d = asdict(conf)
    if conf.negative == "adapter":
        d.pop("negative")
    if conf.endpoint is None:
        d.pop("endpoint")
    else:
        d["endpoint"] = {"url": conf.endpoint.url, "model": conf.endpoint.model,
                         "key": endpoint_key_id(conf.endpoint)}
    return d


@dataclass(frozen=True)
class EvalSettings:
    leakage_max_new_tokens: int = 64
    test_limit: int | None = None
    attack: AttackConfig = field(default_factory=AttackConfig)
    attack_limit: int | None = None
    #: also run `attack` with the context's trailing space cut (`AttackConfig.strip_trailing_space`),
    #: reported as `attack_stripped` next to the challenge's own
    stripped_attack: bool = True
    mmlu: str | None = None
    mmlu_limit: int | None = 2000
    mmlu_seed: int = 0
    #: "cloze" (each choice's text, by log-likelihood per character) or "letters" (MMLU's lettered
    #: format); see `unleak.eval.utility`: models below ~1B score at chance with letters
    mmlu_format: str = "cloze"
    #: "generative" format: the answers' length and who judges them (default: the offline choice matcher)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    reference_model: str = "default"
    profiles: tuple[str, ...] = ("original", "strict")
    batch_size: int = 16
    #: also score the test split's own answers, as written and with their PII replaced by this template
    #: (the `redact` candidates' default), under the same counts and the reference model: what a perfect
    #: redaction of the true answer scores (`references.json`, two rows of the report); None: off
    reference_template: str | None = field(default_factory=lambda: CandidateConfig().redact_template)
    #: general requests answered by every configuration (`unleak.eval.general`; 0: none, None: all of the
    #: source): their answers' perplexity under the reference model, the share holding a placeholder and
    #: the test conversations' values they repeat
    general: int | None = 24
    #: a .txt (one request a line) or JSONL (`prompt` or `messages`) file of them; None: the embedded
    #: `config.GENERAL_EVAL_REQUESTS`
    general_source: str | None = None
    general_max_new_tokens: int = 48
    #: what a redaction placeholder looks like in an answer (the `redact` candidates' template)
    placeholder_template: str = field(default_factory=lambda: CandidateConfig().redact_template)

    def __post_init__(self) -> None:
        from unleak.corpus.model import check_template

        if self.mmlu_format not in MC_FORMATS:
            raise UnleakError(f"mmlu_format must be one of {', '.join(MC_FORMATS)}, got {self.mmlu_format!r}")
        if self.general is not None and self.general < 0:
            raise UnleakError(f"general must be >= 0 or None (all), got {self.general}")
        if self.general_max_new_tokens < 1:
            raise UnleakError(f"general_max_new_tokens must be >= 1, got {self.general_max_new_tokens}")
        if self.general_source is not None and not Path(self.general_source).is_file():
            raise UnleakError(f"general source {self.general_source}: no such file")
        check_template(self.placeholder_template, "placeholder_template")

    def identity(self) -> dict[str, Any]:
        """The settings as results depend on them (what caches are keyed by): the judge counts only for
        generative utility, so other formats keep their cached results when it changes."""
        d = asdict(self)
        if self.mmlu_format != "generative":
            d.pop("judge")
        return d


def run_evaluation(corpus: str | Path, configurations: list[EvalConfiguration], out_dir: str | Path,
                   settings: EvalSettings | None = None, progress: bool = True) -> list[dict[str, Any]]:
    from unleak.corpus.store import load_split
    from unleak.decoding.generator import CFGGenerator, negative_adapter_for
    from unleak.eval.attack import attack_prompts, extraction_attack_success_rate, run_attacks
    from unleak.eval.fluency import answer_fluency, reference_token_ids
    from unleak.eval.general import (general_requests, general_rows, holds_placeholder, served_answers,
                                     spilled_values)
    from unleak.eval.leakage import count_pii, generate_answers
    from unleak.eval.journal import JournaledGenerator
    from unleak.eval.judge import build_judge
    from unleak.eval.utility import (accuracy_with_se, judged_utilities, load_mc_questions, served_generative_answers,
                                     served_multiple_choice_predictions)
    from unleak.models import load_model, load_tokenizer, runtime_environment
    from unleak.pairs.samples import build_samples, limit_samples
    from unleak.pii.base import detector_for_profile
    from unleak.pii.known import conversation_values, count_known_values
    from unleak.chat import render_prompt
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    s = settings or EvalSettings()
    environment = runtime_environment()  # recorded with each row evaluated here
    out = Path(out_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "answers").mkdir(exist_ok=True)
    test = load_split(corpus, "test")
    samples = limit_samples(build_samples(test), s.test_limit, 0)
    if not samples:
        raise UnleakError(f"{corpus}: the test split has no PII inside an assistant turn")
    values = conversation_values(test)
    if s.mmlu and s.mmlu_format != "generative" and any(c.endpoint for c in configurations):
        raise UnleakError(f"an endpoint answers multiple-choice questions in the generative format only (the "
                          f"{s.mmlu_format} format scores the choices' tokens inside the model): use "
                          "mmlu_format 'generative' (--mmlu-format generative)")
    questions = load_mc_questions(s.mmlu, s.mmlu_limit, s.mmlu_seed) if s.mmlu else None
    dialogs = general_requests(s.general, s.general_source) if s.general != 0 else []
    detectors = {p: detector_for_profile(PIIConfig(profile=p)) for p in s.profiles}
    judge = None  # built when first needed
    @functools.cache
    def reference_model() -> tuple[Any, Any, list[list[int]]]:
        """The reference model, its tokenizer and the test prompts' ids (loaded once, when first needed)."""
        ref_tok = load_tokenizer(s.reference_model)
        return (load_model(s.reference_model), ref_tok,
                [ref_tok(render_prompt(ref_tok, x.prompt_messages(), continue_final=bool(x.prefix)),
                         add_special_tokens=False)["input_ids"] for x in samples])

    @functools.cache
    def general_prompt_ids() -> list[list[int]]:
        """The general requests as the reference model reads them (its template, no system prompt of ours)."""
        ref_tok = reference_model()[1]
        return [ref_tok(render_prompt(ref_tok, d), add_special_tokens=False)["input_ids"] for d in dialogs]

    attacks = {"attack": s.attack}
    if s.stripped_attack and not s.attack.strip_trailing_space:
        attacks["attack_stripped"] = replace(s.attack, strip_trailing_space=True)
    attack_sets: dict[tuple[str, str], list[Any]] = {}  # attack prompts per tokenizer (model path) and variant
    loaded: dict[tuple[str, str | None, str], Any] = {}
    done: dict[str, dict[str, Any]] = {}
    # a configuration's results do not depend on the reference rows' template
    conf_settings = {k: v for k, v in s.identity().items() if k != "reference_template"}
    keys = {conf.name: settings_hash(configuration_identity(conf), conf_settings, str(corpus), RESULTS_VERSION,
                                     SAMPLES_VERSION) for conf in configurations}
    groups: dict[tuple[str, str | None, bool, EndpointConfig | None], list[EvalConfiguration]] = {}
    for conf in configurations:
        path = out / "configs" / f"{conf.name}.json"
        cached = json.loads(path.read_text()) if path.is_file() else {}
        if cached.get("hash") == keys[conf.name] and (out / "answers" / f"{conf.name}.jsonl").is_file():
            done[conf.name] = cached
        else:
            groups.setdefault((conf.model, conf.adapter, conf.served, conf.endpoint), []).append(conf)
    for (model_path, adapter, served, endpoint), group in groups.items():
        started = time.time()
        # every row uses the adapter, merged (a cheaper decode step) unless some negative rows run without it:
        # then it stays unmerged and PEFT switches it per row, so those settings still share each prompt's
        # prefill and the decode steps where they agree with the others
        merge = all(c.negative == "adapter" for c in group)
        mkey = (model_path, adapter, merge, endpoint)
        if endpoint is not None:
            from unleak.decoding.endpoint import EndpointGenerator

            loaded[mkey] = EndpointGenerator(endpoint, load_tokenizer(model_path))
        elif mkey not in loaded:
            loaded.clear()
            tok = load_tokenizer(model_path)
            model = load_model(model_path, adapter=adapter, merge=merge)
            if len(tok) > model.get_input_embeddings().num_embeddings:
                raise UnleakError(f"{model_path}: tokenizer has {len(tok)} tokens but the model's embedding only "
                                  f"{model.get_input_embeddings().num_embeddings}: model/tokenizer mismatch")
            loaded[mkey] = CFGGenerator(model, tok, max_batch_requests=s.batch_size)
        # what this group generates is journaled until its configurations are saved: a rerun resumes it
        journal = out / "journal" / f"{settings_hash(sorted(keys[c.name] for c in group))}.jsonl"
        scores_journal = journal.with_suffix(".scores.jsonl")  # the multiple-choice scoring's batches
        gen = JournaledGenerator(loaded[mkey], journal)
        tok = gen.tokenizer
        # all guidance settings of a model at once: each prompt is prefilled once for all of them
        guidances = [GuidanceConfig(c.guidance_scale, c.cfg_space) for c in group]
        negatives = [negative_adapter_for(c.negative, c.adapter, c.name) for c in group]
        for variant, attack in attacks.items():
            if (model_path, variant) not in attack_sets:
                attack_sets[model_path, variant] = attack_prompts(test, tok, attack)[: s.attack_limit]
        label = group[0].name if len(group) == 1 else f"{group[0].name} (+{len(group) - 1})"
        if gen.resumed:
            label += f" (resumed: {gen.resumed} results journaled)"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not progress) as bar:
            leak_task = bar.add_task(f"{label}: test prompts", total=len(samples))
            answers = generate_answers(gen, samples, guidances, s.leakage_max_new_tokens,
                                       on_batch=lambda n: bar.advance(leak_task, n), negative_adapters=negatives)
            # the variants' prompts together: a placeholder's context in each starts alike (shared prefill)
            variant_prompts = {v: attack_sets[model_path, v] for v in attacks}
            task = bar.add_task(f"{label}: attack prompts ({', '.join(v.replace('_', ' ') for v in attacks)})",
                                total=sum(map(len, variant_prompts.values())))
            attack_outs = run_attacks(gen, variant_prompts, guidances, s.attack, served=served,
                                      on_batch=lambda n: bar.advance(task, n), negative_adapters=negatives)
            responses = None  # generative utility: each setting's answers to the questions
            if questions is not None and s.mmlu_format == "generative":
                t0 = time.time()
                task = bar.add_task(f"{label}: MMLU answers", total=len(questions))
                responses = served_generative_answers(gen, questions, guidances, served, s.judge,
                                                      on_batch=lambda n: bar.advance(task, n),
                                                      negative_adapters=negatives)
                generation_seconds = time.time() - t0
            general_outs = None  # each setting's answers to the general requests
            if dialogs:
                task = bar.add_task(f"{label}: general requests", total=len(dialogs))
                general_outs = served_answers(gen, dialogs, guidances, served, s.general_max_new_tokens,
                                              on_batch=lambda n: bar.advance(task, n), negative_adapters=negatives)
        ref_model, ref_tok, prompt_ids = reference_model()
        general: list[dict[str, Any] | None] = [None] * len(group)
        general_answers: list[list[dict[str, Any]]] = [[] for _ in group]
        if general_outs is not None:
            general_fluency = answer_fluency(ref_model, ref_tok, general_prompt_ids(),
                                             [reference_token_ids(outs, tok, ref_tok) for outs in general_outs])
            every_value = frozenset().union(*values.values())  # nothing asked for: any test conversation's
            for i, (outs, flu) in enumerate(zip(general_outs, general_fluency, strict=True)):
                replies = [a.text for a in outs]
                flags = [holds_placeholder(t, s.placeholder_template) for t in replies]
                spilled = spilled_values(replies, every_value)
                general_answers[i] = general_rows(dialogs, replies, flags, spilled)
                held = sum(flags)
                general[i] = {"requests": len(dialogs), "max_new_tokens": s.general_max_new_tokens, **flu,
                              "placeholders": held, "placeholder_share": round(held / len(dialogs), 4),
                              "known_values": sum(map(len, spilled)), "answers_with_known": sum(map(bool, spilled)),
                              "reference_model": s.reference_model}
        utilities: list[dict[str, Any] | None] = [None] * len(group)
        utility_rows: list[list[dict[str, Any]]] = [[] for _ in group]
        if responses is not None:
            judge = judge or build_judge(s.judge)
            utilities, utility_rows = judged_utilities(questions, responses, judge, generation_seconds)
        elif questions is not None:
            t0 = time.time()
            predictions = served_multiple_choice_predictions(gen.model, tok, questions, guidances,
                                                             gen.prompts if served else None, s.batch_size,
                                                             progress=progress, mc_format=s.mmlu_format,
                                                             negative_adapter=[c.negative == "adapter" for c in group],
                                                             journal=scores_journal)
            utility_seconds = round(time.time() - t0, 1)  # the group's: its settings share the scoring
            utilities = [{**accuracy_with_se(correct), "format": s.mmlu_format, "correct": correct,
                          "seconds": utility_seconds}
                         for correct in ([p == q["answer"] for p, q in zip(preds, questions)] for preds in predictions)]
        fluency = answer_fluency(ref_model, ref_tok, prompt_ids,
                                 [reference_token_ids(conf_answers, tok, ref_tok) for conf_answers in answers])
        seconds = round(time.time() - started, 1)  # the whole group's: its configurations share the work
        for i, (conf, conf_answers, conf_fluency, utility) in enumerate(zip(group, answers, fluency, utilities,
                                                                            strict=True)):
            texts = [a.text for a in conf_answers]
            leakage = {p: count_pii(texts, d) for p, d in detectors.items()}
            known = count_known_values(texts, [values[x.conversation_id] for x in samples])
            attack_runs = {v: (attack_sets[model_path, v], outs[i]) for v, outs in attack_outs.items()}
            atomic_write_jsonl(out / "answers" / f"{conf.name}.jsonl",
                               answer_rows(samples, texts, leakage, known, attack_runs, s.attack.match_chars)
                               + utility_rows[i] + general_answers[i])
            result = {
                "name": conf.name, "hash": keys[conf.name], "configuration": asdict(conf),
                "test_prompts": len(samples),
                "pii": {p: {k: v for k, v in r.items() if k not in ("per_answer", "spans")}
                        for p, r in leakage.items()},
                "pii_per_answer": leakage[s.profiles[0]]["per_answer"],
                "known_values": {k: v for k, v in known.items() if k != "spans"},
                **{v: extraction_attack_success_rate(o, p, s.attack.match_chars) for v, (p, o) in attack_runs.items()},
                "fluency": {**conf_fluency, "reference_model": s.reference_model},
                "utility": utility,
                "general": general[i],
                "examples": [{"sample": x.id, "answer": t} for x, t in zip(samples[:5], texts[:5])],
                "seconds": seconds,
                "evaluated_with": [c.name for c in group],
                # where it was evaluated (the answers depend on the device's dtype); a served row's is the server's
                **({"endpoint_model": gen.model_name} if endpoint is not None
                   else {"environment": environment}),
            }
            atomic_write_text(out / "configs" / f"{conf.name}.json", json.dumps(result, indent=1) + "\n")
            done[conf.name] = result
        journal.unlink(missing_ok=True)
        scores_journal.unlink(missing_ok=True)
        if journal.parent.is_dir() and not any(journal.parent.iterdir()):
            journal.parent.rmdir()
    if s.reference_template is not None:
        key = settings_hash({k: v for k, v in s.identity().items() if k != "judge"}, str(corpus), RESULTS_VERSION,
                            SAMPLES_VERSION)
        path = out / "references.json"
        if not (path.is_file() and json.loads(path.read_text()).get("hash") == key):
            rows = reference_answers(samples, {c.id: c for c in test}, s.reference_template, reference_model(),
                                     s.leakage_max_new_tokens, detectors, values)
            atomic_write_text(path, json.dumps({"hash": key, "rows": rows}, indent=1) + "\n")
    return [done[conf.name] for conf in configurations]


def reference_answers(samples: list[Any], conversations: dict[str, Any], template: str,
                      reference: tuple[Any, Any, list[list[int]]], max_tokens: int, detectors: dict[str, Any],
                      values: dict[str, Any]) -> list[dict[str, Any]]:
    """The test samples' own continuations (the first `max_tokens` tokens, as the evaluated answers are cut),
    as written and with each PII value replaced by `template`: PII, known values, perplexity, repetition."""
    from unleak.config import REDACT_TYPE_NAMES
    from unleak.eval.fluency import answer_fluency
    from unleak.eval.leakage import count_pii
    from unleak.pairs.build import redacted_continuation
    from unleak.pii.known import count_known_values

    model, tok, prompt_ids = reference
    texts = {"reference: test answers": [x.target for x in samples],
             "reference: test answers, redacted": [redacted_continuation(
                 x, conversations[x.conversation_id], template, REDACT_TYPE_NAMES) for x in samples]}
    ids = {name: [tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in ts] for name, ts in texts.items()}
    texts = {name: [tok.decode(i) for i in rows] for name, rows in ids.items()}
    fluency = answer_fluency(model, tok, prompt_ids, list(ids.values()))
    rows = []
    for (name, ts), flu in zip(texts.items(), fluency, strict=True):
        pii = {p: count_pii(ts, d) for p, d in detectors.items()}
        known = count_known_values(ts, [values[x.conversation_id] for x in samples])
        rows.append({"name": name, "template": template if name.endswith("redacted") else None,
                     "test_prompts": len(samples), "pii": {p: {"total": r["total"]} for p, r in pii.items()},
                     "known_values": {"total": known["total"]}, "fluency": flu,
                     "examples": [{"sample": x.id, "answer": t} for x, t in zip(samples[:3], ts[:3])]})
    return rows


def answer_rows(samples: list[Any], texts: list[str], leakage: dict[str, dict[str, Any]], known: dict[str, Any],
                attack_runs: dict[str, tuple[list[Any], list[str]]], match_chars: int) -> list[dict[str, Any]]:
    """One row per test answer (the PII each detector profile found in it, the conversation's own values it
    repeats) and per attack output of each attack variant (`attack_runs`: variant -> prompts, outputs)."""
    from unleak.eval.attack import attack_success

    rows: list[dict[str, Any]] = [
        {"kind": "test", "sample": x.id, "conversation": x.conversation_id, "turn": x.turn, "prefix": x.prefix,
         "answer": t, "pii": {p: [{"label": sp.label, "text": sp.text} for sp in r["spans"][i]]
                              for p, r in leakage.items()},
         "known_values": [sp.text for sp in known["spans"][i]]}
        for i, (x, t) in enumerate(zip(samples, texts, strict=True))]
    rows += [{"kind": "attack", "variant": variant, "conversation": p.conversation_id, "placeholder": p.placeholder,
              "pii_type": p.pii_type, "value": p.value, "output": o, "hit": attack_success(o, p.value, match_chars)}
             for variant, (prompts, outputs) in attack_runs.items() for p, o in zip(prompts, outputs, strict=True)]
    return rows
