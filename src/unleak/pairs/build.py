"""Preference pairs: candidates per sample and mode, NER verification, chosen/rejected, the CFG variant.

`build_preference_pairs(corpus_dir, generator, out_dir, config)`:

1. samples of the corpus's **train** split (`samples.build_samples`);
2. candidate answers in every configured mode (`mode_request`), drawn in
   rounds: a sample with no PII-free candidate is tried again, up to
   `max_tries` rounds; every generated text is appended to
   `candidates.cache.jsonl` (fsync'd per batch) under a key
   `sample/mode/try/k`, so a killed run resumes where it stopped. The
   `redact` mode (not in the original) needs no model: its candidate is the
   original continuation with each PII value of the conversation replaced by
   a placeholder (`redacted_continuation`), checked like any other (where
   the detector still finds an entity, that is replaced too and checked
   again: `CandidateConfig.redact_detected`, `unleak.pii.redact`); a
   candidate that loops (`CandidateConfig.max_repetition`) is unusable;
3. the PII detector labels each candidate's full answer; PII-free answers are
   **chosen**, the original answer (and PII-bearing candidates) **rejected**.
   With `PairsConfig.reject_known_values` (not in the original) a candidate
   that repeats a PII value of its own conversation, or a part of a name
   from it, counts as PII too, whatever the detector says: a small generator
   parrots the dialog's phone numbers and e-mails, which NER does not label;
4. with `PairsConfig.keep` (not in the original), keep pairs against
   over-redaction (`unleak.pairs.keep`): general requests answered by the
   generator (PII-free by the detector) against the same answers with
   invented placeholders; not swapped in the CFG variant;
5. output, written atomically, in TRL's conversational preference format:
   `pairs.jsonl` (the dialog as prompt), `pairs_cfg.jsonl` (each pair under the
   positive system prompt, plus under the negative one with chosen/rejected
   swapped), `failed.jsonl` (samples without a PII-free candidate),
   `samples.jsonl`, `stats.json`.

Pairs are whole assistant answers after the dialog (a prompt ending in a
half-written assistant message is a format TRL's trainers tokenise as two
turns). A completion-mode candidate becomes the answer `prefix +
continuation` against the original `prefix + target`; its continuation is
what must be PII-free (the prefix is the user's own dialog, like the prompt).
unleak's trainer moves the shared leading tokens of chosen and rejected into
the prompt, so such a pair trains the continuation of the half-written answer
exactly as the original's samples do. With `PairsConfig.user_turns` (not in
the original) PII in user turns gives pairs too: the dialog as prompt, the
user's message with its PII replaced (`redact`) as chosen against the
original message, both in the user's role. With `PairsConfig.name_openers`
(not in the original) answers after a user turn that holds a name are paired
at their start too: the redacted answer opened with the name's placeholder
chosen against the answer opened with the user's first name (`samples.name_opener_samples`;
`rejected_source: "name_opener"`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unleak.chat import Message, with_system_prompt
from unleak.config import PairsConfig, PromptConfig, settings_hash
from unleak.corpus.model import Conversation, fill_placeholder, placeholder_pattern
from unleak.corpus.store import SPLIT, load_split
from unleak.errors import UnleakError
from unleak.jsonl import append_jsonl, atomic_write_jsonl, atomic_write_text, read_journal
from unleak.pairs.generators import CandidateGenerator, CandidateRequest
from unleak.pairs.keep import (complete_sentences, invent_placeholders, keep_pair, keep_requests, noun_phrases,
                               open_with, placeholder_openers, request_key)
from unleak.pairs.samples import (Sample, build_samples, limit_samples, name_opener_samples, opened_by,
                                  opening_stratum, pair_stratum)
from unleak.pii.known import NAME_TYPES, conversation_values, known_value_spans, value_types
from unleak.pii.redact import redact_spans

log = logging.getLogger(__name__)

CACHE = "candidates.cache.jsonl"
#: the pair files by variant: the dialog as prompt, or each pair under both system prompts
PAIR_FILES = {"plain": "pairs.jsonl", "cfg": "pairs_cfg.jsonl"}
#: modes whose candidate continues the half-written answer (the answer is `prefix + text`)
CONTINUING_MODES = ("completion", "redact")


@dataclass
class Candidate:
    sample_id: str
    mode: str
    attempt: int
    k: int
    text: str  # what the generator returned
    answer: str | None = None  # the full assistant answer it stands for; None if unusable
    repetitive: bool = False  # unusable because it loops (`CandidateConfig.max_repetition`)
    redacted_detected: bool = False  # a `redact` candidate whose detected entities were replaced too
    pii: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.sample_id}/{self.mode}/{self.attempt}/{self.k}"

    @property
    def checked_text(self) -> str:
        """What the detector must find PII-free: the continuation in completion/redact mode, else the answer."""
        return self.text if self.mode in CONTINUING_MODES else (self.answer or "")

    @property
    def chosen(self) -> bool:
        return self.answer is not None and not self.pii


def applicable_modes(sample: Sample, modes: tuple[str, ...]) -> list[str]:
    """Completion and start-with need a half-written answer; without one they equal plain chat.
    A user turn's sample takes `redact` only (a generator answers as the assistant)."""
    if sample.role != "assistant":
        return [m for m in modes if m == "redact"]
    return [m for m in modes if sample.prefix.strip() or m in ("chat", "nudge", "redact")]


def redacted_continuation(sample: Sample, conversation: Conversation, template: str,
                          type_names: Mapping[str, str] | None = None, drop_addresses: bool = False) -> str:
    """The sample's target with every PII occurrence of its turn replaced by `template` (name, type, placeholder);
    a name-opener sample's (`Sample.opener`) opens with the name's placeholder where the target has the name.

    With `drop_addresses` (`PairsConfig.drop_addresses`) an assistant's name that addresses the reader is left
    out instead (`corpus.model.addresses_reader`: "Sure! Dalton, restart it." -> "Sure! Restart it."), and a
    name-opener sample's answer is the turn as written, redacted, without the opener."""
    dropped = NAME_TYPES if drop_addresses and sample.role == "assistant" else ()
    text = conversation.redacted_text(sample.turn, template, start=len(sample.prefix), type_names=type_names,
                                      drop_addresses=dropped)
    if sample.opener and not dropped:
        return opened_by(fill_placeholder(template, sample.pii_type, sample.opener, type_names), text)
    return text


def mode_request(sample: Sample, mode: str, prompts: PromptConfig, start_with_instruction: str,
                 seed: int) -> CandidateRequest:
    """The generator's chat for one sample in one mode (the generator system prompt in front)."""
    messages = with_system_prompt(sample.messages, prompts.generator)
    continue_final = False
    if mode in ("nudge", "start_with"):
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        content = messages[last]["content"]
        if mode == "nudge":
            content = f"{prompts.nudge_prefix} {content}"
        else:
            content = f"{content}\n\n{start_with_instruction.format(prefix=sample.prefix.strip())}"
        messages = messages[:last] + [{"role": "user", "content": content}] + messages[last + 1:]
    elif mode == "completion":
        messages = messages + [{"role": "assistant", "content": sample.prefix}]
        continue_final = True
    elif mode != "chat":
        raise UnleakError(f"candidate mode {mode!r} is not drawn from a generator")
    return CandidateRequest(messages, continue_final, seed)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_repetitive(text: str, limit: float | None) -> bool:
    """Whether the words of `text` repeat more than `limit` (seq-rep-4 over lower-cased words; None: never)."""
    if limit is None:
        return False
    from unleak.eval.fluency import repetition_counts

    repeated, total = repetition_counts(text.lower().split())
    return total > 0 and repeated / total > limit


def candidate_answer(sample: Sample, mode: str, text: str) -> str | None:
    """The full assistant answer a generated text stands for, or None when it is unusable."""
    if mode in CONTINUING_MODES:
        answer = sample.prefix + text
        return answer if text.strip() else None
    answer = text.strip()
    if not answer:
        return None
    if mode == "start_with" and not _norm(answer).startswith(_norm(sample.prefix)):
        return None  # it did not start with the given words
    return answer


def _seed(base: int, key: str) -> int:
    return (int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) + base) % (2**31)


def _read_cache(path: Path) -> dict[str, str]:
    """Generated texts by key; a torn last line (a killed writer) is ignored."""
    return {row["key"]: row["text"] for row in read_journal(path)
            if isinstance(row.get("key"), str) and isinstance(row.get("text"), str)}


def _fingerprint(config: PairsConfig, generator: str, corpus_dir: Path, prompts: PromptConfig) -> str:
    split = (corpus_dir / SPLIT).read_text() if (corpus_dir / SPLIT).is_file() else ""
    return settings_hash(asdict(config.candidate), generator, split, asdict(prompts))


def build_preference_pairs(corpus_dir: str | Path, generator: CandidateGenerator | None, out_dir: str | Path,
                           config: PairsConfig | None = None, prompts: PromptConfig | None = None,
                           detector: Any = None, batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """Build `pairs.jsonl` and `pairs_cfg.jsonl` in `out_dir`; return the statistics (also in stats.json).

    `generator` may be None when every configured mode is model-free (`redact`).
    """
    config = config or PairsConfig()
    prompts = prompts or PromptConfig()
    corpus_dir, out = Path(corpus_dir), Path(out_dir)
    generated = config.candidate.generated_modes
    if generator is None and generated:
        raise UnleakError(f"modes {', '.join(generated)} need a generator model (only 'redact' runs without)")
    if generator is None and config.keep.requests:
        raise UnleakError("keep pairs need a generator model to answer the general requests (the clean base model)")
    generator_name = generator.name if generator is not None and (generated or config.keep.requests) else "none"
    requests = keep_requests(config.keep)  # a bad request file fails before anything is generated
    train = load_split(corpus_dir, "train")
    samples = limit_samples(build_samples(train), config.limit, config.candidate.seed, opening_stratum)
    if config.user_turns != 0:
        samples += limit_samples(build_samples(train, roles=("user",)), config.user_turns, config.candidate.seed)
    if config.name_openers != 0:
        samples += limit_samples(name_opener_samples(train, {s.id for s in samples}), config.name_openers,
                                 config.candidate.seed)
    if not samples:
        raise UnleakError(f"{corpus_dir}: the train split has no PII inside an assistant turn")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, generator_name, corpus_dir, prompts)
    fp_file = out / "fingerprint"
    if fp_file.is_file() and fp_file.read_text().strip() != fingerprint:
        raise UnleakError(f"{out}: holds candidates made with other settings (generator, modes, split); "
                          "use another --out or delete it")
    atomic_write_text(fp_file, fingerprint + "\n")
    if detector is None:
        from unleak.pii.base import detector_for_profile

        detector = detector_for_profile(config.pii)

    values = conversation_values(train)
    conversations = {c.id: c for c in train}
    cc = config.candidate
    cache_path = out / CACHE
    cache = _read_cache(cache_path)
    candidates: dict[str, list[Candidate]] = defaultdict(list)
    sample_by_id = {s.id: s for s in samples}
    addressed: set[str] = set()  # samples whose redacted answer lost an address (`PairsConfig.drop_addresses`)

    def label(cands: list[Candidate]) -> None:
        """The detector's spans (and, with `reject_known_values`, the conversation's own values) of each."""
        for cand, spans in zip(cands, detector.detect([c.checked_text for c in cands])):
            if config.reject_known_values:
                spans = spans + known_value_spans(cand.checked_text,
                                                  values[sample_by_id[cand.sample_id].conversation_id])
            cand.pii = [sp.as_dict() for sp in spans]

    pending = list(samples)
    for attempt in range(cc.max_tries):
        todo: list[tuple[Candidate, CandidateRequest]] = []
        computed: list[Candidate] = []
        for s in pending:
            for mode in applicable_modes(s, cc.modes):
                if mode == "redact":  # deterministic: one candidate, first round only
                    if attempt == 0:
                        conv = conversations[s.conversation_id]
                        text = redacted_continuation(s, conv, cc.redact_template, cc.redact_type_names,
                                                     config.drop_addresses)
                        if config.drop_addresses and text != redacted_continuation(
                                s, conv, cc.redact_template, cc.redact_type_names):
                            addressed.add(s.id)
                        computed.append(Candidate(s.id, mode, 0, 0, text))
                    continue
                for k in range(cc.candidates):
                    cand = Candidate(s.id, mode, attempt, k, "")
                    todo.append((cand, mode_request(s, mode, prompts, cc.start_with_instruction,
                                                    _seed(cc.seed, cand.key))))
        missing = [(c, r) for c, r in todo if c.key not in cache]
        if missing:
            assert generator is not None
            _generate_into_cache(generator, missing, cache, cache_path, batch_size, progress,
                                 f"candidates, round {attempt + 1}/{cc.max_tries}")
        by_id = {s.id: s for s in pending}
        round_cands = computed
        for cand, _ in todo:
            cand.text = cache[cand.key]
            round_cands.append(cand)
        for cand in round_cands:
            cand.answer = candidate_answer(by_id[cand.sample_id], cand.mode, cand.text)
            if cand.answer is not None and is_repetitive(cand.checked_text, cc.max_repetition):
                cand.answer, cand.repetitive = None, True
        label([c for c in round_cands if c.answer is not None])
        if cc.redact_detected:
            again = [c for c in round_cands if c.mode == "redact" and c.pii]
            for cand in again:
                sample = by_id[cand.sample_id]
                cand.redacted_detected = True
                cand.text = redact_spans(cand.text, cand.pii, cc.redact_template, cc.redact_type_names,
                                         value_types(conversations[sample.conversation_id]))
                cand.answer = candidate_answer(sample, cand.mode, cand.text)
            label([c for c in again if c.answer is not None])
        for cand in round_cands:
            candidates[cand.sample_id].append(cand)
        pending = [s for s in pending if not any(c.chosen for c in candidates[s.id])]
        if not pending:
            break

    chosen = [c.answer for cands in candidates.values() for c in cands if c.chosen and c.answer]
    keep_rows, keep_stats = _keep_pairs(requests, config, prompts, generator, generator_name, detector, cache,
                                        cache_path, batch_size, progress, frozenset().union(*values.values()),
                                        chosen)
    plain, cfg_rows, failed = assemble_pairs(samples, candidates, generator_name, config, prompts, keep_rows)
    stats = pair_statistics(samples, candidates, plain, cfg_rows, failed)
    stats["keep"] = keep_stats
    stats["addresses_dropped"] = len(addressed)
    stats.update(generator=generator_name, corpus=str(corpus_dir), split="train", profile=config.pii.profile,
                 config=asdict(config))
    atomic_write_jsonl(out / "samples.jsonl", [s.as_dict() for s in samples])
    atomic_write_jsonl(out / PAIR_FILES["plain"], plain)
    atomic_write_jsonl(out / PAIR_FILES["cfg"], cfg_rows)
    atomic_write_jsonl(out / "failed.jsonl", failed)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, default=str) + "\n")
    return stats


def _generate_into_cache(generator: CandidateGenerator, work: list[tuple[Candidate, CandidateRequest]],
                         cache: dict[str, str], cache_path: Path, batch_size: int, progress: bool,
                         label: str, key: Callable[[Candidate], str] = lambda c: c.key) -> None:
    if not work:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not progress) as bar:
        task = bar.add_task(label, total=len(work))
        for i in range(0, len(work), batch_size):
            chunk = work[i:i + batch_size]
            texts = generator.generate([r for _, r in chunk])
            rows = [{"key": key(c), "text": t} for (c, _), t in zip(chunk, texts)]
            append_jsonl(cache_path, rows)
            for row in rows:
                cache[row["key"]] = row["text"]
            bar.advance(task, len(chunk))


def _keep_pairs(requests: list[list[Message]], config: PairsConfig, prompts: PromptConfig,
                generator: CandidateGenerator | None, generator_name: str, detector: Any, cache: dict[str, str],
                cache_path: Path, batch_size: int, progress: bool, known: frozenset[str] = frozenset(),
                chosen: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keep pairs (`KeepConfig`): the generator's PII-free answers to general requests against the same
    answers with invented placeholders; answers are cached like candidates. `known`: the train split's PII
    values, which no keep answer may repeat (with `reject_known_values`); `chosen`: the redaction pairs'
    chosen answers, whose placeholder addresses open rejected sides with `opener_source="corpus"`."""
    from unleak.pii.detectors import load_spacy

    k = config.keep
    stats: dict[str, Any] = {"requests": len(requests), "unusable": 0, "with_pii": 0, "no_phrase": 0,
                             "name_opener": 0, "pairs": 0}
    if not requests:
        return [], stats
    cc = config.candidate
    openers = [fill_placeholder(cc.redact_template, "NAME", "NAME-1", cc.redact_type_names) + ","]
    if k.opener_source == "corpus":
        openers = placeholder_openers(chosen, placeholder_pattern(cc.redact_template)) or openers
        stats["openers"] = openers
    keys = [request_key(d) for d in requests]
    work = [(Candidate(key, "keep", 0, 0, ""),
             CandidateRequest(with_system_prompt(d, prompts.generator), False, _seed(cc.seed, key)))
            for d, key in zip(requests, keys)]
    missing = [(c, r) for c, r in work if c.sample_id not in cache]
    if missing:
        assert generator is not None
        # cached under the request's key (a candidate key holds '/'s, this one has no round or index)
        _generate_into_cache(generator, missing, cache, cache_path, batch_size, progress, "keep answers",
                             key=lambda c: c.sample_id)
    answers = [complete_sentences(cache[key]) for key in keys]
    usable = [(d, a) for d, a in zip(requests, answers) if a]
    stats["unusable"] = len(requests) - len(usable)
    found = [[] for _ in usable] if k.entities else detector.detect([a for _, a in usable])
    if config.reject_known_values:
        found = [spans + known_value_spans(a, known) for (_, a), spans in zip(usable, found)]
    clean = [(d, a) for (d, a), spans in zip(usable, found) if not spans]
    stats["with_pii"] = len(usable) - len(clean)
    nlp = load_spacy(config.pii.ner_model, parser=True)
    rng = random.Random(k.seed)
    rows = []
    for (dialog, answer), phrases in zip(clean, noun_phrases(nlp, [a for _, a in clean])):
        rejected = invent_placeholders(answer, phrases, rng, config.candidate.redact_template,
                                       config.candidate.redact_type_names, k.types, k.every, k.max_placeholders,
                                       prefer_entities=k.entities)
        if rejected is None:
            stats["no_phrase"] += 1
            continue
        if k.name_opener and rng.random() < k.name_opener:
            # one opener draws nothing, so the name opener's pairs stay as they were before `opener_source`
            rejected = open_with(rejected, openers[0] if len(openers) == 1 else rng.choice(openers))
            stats["name_opener"] += 1
        rows.append(keep_pair(dialog, answer, rejected, generator_name))
    stats["pairs"] = len(rows)
    return rows, stats


def _provenance(sample: Sample, generator: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {"sample_id": sample.id, "conversation_id": sample.conversation_id, "pii_type": sample.pii_type,
            "role": sample.role, "generator": generator, "mode": mode, **extra}


def assemble_pairs(samples: list[Sample], candidates: dict[str, list[Candidate]], generator: str,
                   config: PairsConfig, prompts: PromptConfig, keep: list[dict[str, Any]] | None = None
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Plain pairs, CFG-variant pairs and the failed samples, from verified candidates (and `keep` pairs)."""
    plain: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for s in samples:
        cands = candidates.get(s.id, [])
        chosen = [c for c in cands if c.chosen]
        if not chosen:
            failed.append({"sample_id": s.id, "conversation_id": s.conversation_id, "pii_type": s.pii_type,
                           "tries": max((c.attempt for c in cands), default=-1) + 1,
                           "reasons": dict(Counter(_failure(c) for c in cands))})
            continue
        seen: set[str] = set()
        for c in chosen:
            if c.answer in seen:
                continue
            seen.add(c.answer)
            plain.append(_pair(s.messages, c.answer, s.original_answer, _provenance(
                s, generator, c.mode, rejected_source="name_opener" if s.opener else "original"), s.role))
        if config.pii_candidates_as_rejected:
            for c in cands:
                if c.answer is not None and c.pii and c.answer not in seen:
                    seen.add(c.answer)
                    plain.append(_pair(s.messages, chosen[0].answer, c.answer,
                                       _provenance(s, generator, chosen[0].mode, rejected_source=f"candidate:{c.mode}"),
                                       s.role))
    by_id = {s.id: s for s in samples}
    plain = oversample_strata(plain, lambda p: pair_stratum(by_id[p["sample_id"]]), config.min_stratum_pairs)
    plain += keep or []
    cfg_rows = cfg_variant(plain, prompts)
    return plain, cfg_rows, failed


def oversample_strata(pairs: list[dict[str, Any]], stratum: Callable[[dict[str, Any]], Any], minimum: int
                      ) -> list[dict[str, Any]]:
    """`pairs`, then for each stratum with fewer than `minimum` pairs copies of its pairs, in turn, up to
    `minimum` (each copy with its `copy` number, 1 for the first round); `minimum` 0 leaves `pairs` as they are."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for p in pairs:
        groups[stratum(p)].append(p)
    extra = [{**group[i % len(group)], "copy": i // len(group) + 1}
             for group in groups.values() for i in range(max(0, minimum - len(group)))]
    return list(pairs) + extra


def _failure(c: Candidate) -> str:
    return "repetitive" if c.repetitive else "unusable" if c.answer is None else "pii"


def _pair(dialog: list[Message], chosen: str, rejected: str, meta: dict[str, Any], role: str = "assistant"
          ) -> dict[str, Any]:
    """A pair in TRL's conversational format; `role` "user" for a user turn's pair (the dialog, then the
    user's message, clean against original)."""
    return {"prompt": dialog, "chosen": [{"role": role, "content": chosen}],
            "rejected": [{"role": role, "content": rejected}], **meta}


def cfg_variant(pairs: list[dict[str, Any]], prompts: PromptConfig) -> list[dict[str, Any]]:
    """Each pair under the positive system prompt, and under the negative one with chosen and rejected swapped.

    A keep pair is not swapped: with nothing private in the request both prompts should answer alike, so
    that guidance, which follows their difference, leaves such answers as they are.
    """
    rows = []
    for p in pairs:
        swap = p.get("mode") != "keep"
        rows.append({**p, "prompt": with_system_prompt(p["prompt"], prompts.positive), "system": "positive"})
        rows.append({**p, "prompt": with_system_prompt(p["prompt"], prompts.negative), "system": "negative",
                     "chosen": p["rejected"] if swap else p["chosen"],
                     "rejected": p["chosen"] if swap else p["rejected"]})
    return rows


def pair_statistics(samples: list[Sample], candidates: dict[str, list[Candidate]], plain: list[dict[str, Any]],
                    cfg_rows: list[dict[str, Any]], failed: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples, pairs, chosen rate overall and per PII type, rejection rate per mode."""
    per_mode: dict[str, Counter] = defaultdict(Counter)
    for cands in candidates.values():
        for c in cands:
            m = per_mode[c.mode]
            m["candidates"] += 1
            m["unusable"] += c.answer is None
            m["repetitive"] += c.repetitive
            m["with_pii"] += bool(c.pii)
            m["redacted_detected"] += c.redacted_detected
            m["chosen"] += c.chosen
    by_mode = {}
    for mode, m in sorted(per_mode.items()):
        first = [c for cands in candidates.values() for c in cands if c.mode == mode and c.attempt == 0]
        samples_mode = {c.sample_id for c in first}
        ok_first = {c.sample_id for c in first if c.chosen}
        by_mode[mode] = {**m, "rejection_rate": round(1 - m["chosen"] / m["candidates"], 4),
                         "sample_success_first_try": round(len(ok_first) / max(1, len(samples_mode)), 4)}
    failed_ids = {f["sample_id"] for f in failed}
    by_type: dict[str, dict[str, Any]] = {}
    for t in sorted({s.pii_type for s in samples}):
        ids = [s.id for s in samples if s.pii_type == t]
        ok = sum(i not in failed_ids for i in ids)
        by_type[t] = {"samples": len(ids), "with_chosen": ok, "chosen_rate": round(ok / len(ids), 4)}
    n_ok = len(samples) - len(failed_ids)
    by_role = {r: {"samples": sum(s.role == r for s in samples), "pairs": sum(p["role"] == r and p["mode"] != "keep" for p in plain)}
               for r in sorted({s.role for s in samples})}
    return {"samples": len(samples), "with_chosen": n_ok, "chosen_rate": round(n_ok / len(samples), 4),
            "failed": len(failed_ids), "pairs": len(plain), "pairs_cfg": len(cfg_rows),
            "oversampled": sum("copy" in p for p in plain),
            "name_openers": sum(bool(s.opener) for s in samples),
            "by_mode": by_mode, "by_pii_type": by_type, "by_role": by_role}
