"""The detector interface, the span type, the registry and the counting profiles.

A detector is anything with `name` and `detect(texts: list[str]) -> list[list[Span]]`
(one list of spans per text, in order). Implementations register a factory
under a name, like Presidio's recognizer registry; heavy backends (a spaCy
pipeline) are built by the factory or passed in, never at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from unleak.config import PIIConfig
from unleak.errors import UnleakError


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str
    text: str
    detector: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label, "text": self.text,
                "detector": self.detector}


class Detector(Protocol):
    name: str

    def detect(self, texts: list[str]) -> list[list[Span]]: ...


#: detector labels -> unleak's PII types (for scoring against ground truth)
CANONICAL = {
    "PERSON": "NAME", "GPE": "LOC", "LOC": "LOC", "LOCATION": "LOC", "FAC": "LOC", "NORP": "NORP", "ORG": "ORG", "DATE": "DATE",
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "US_SSN": "SSN", "IP_ADDRESS": "IP", "URL": "URL",
    "CREDIT_CARD": "ACCOUNT", "IBAN_CODE": "ACCOUNT", "US_BANK_NUMBER": "ACCOUNT",
}


def canonical_type(label: str) -> str:
    return CANONICAL.get(label, label)


_REGISTRY: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        _REGISTRY[name] = factory
        return factory
    return wrap


def registered_detectors() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_detector(name: str, **options: Any) -> Detector:
    """Build the detector registered as `name` (`ner`, `patterns`, `combined`, ...)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UnleakError(f"unknown detector {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def detector_for_profile(config: PIIConfig | None = None) -> Detector:
    """`original`: spaCy NER minus the excluded labels (the paper's count); `strict`: combined + personal dates."""
    config = config or PIIConfig()
    if config.profile == "original":
        return build_detector("ner", model=config.ner_model, excluded_labels=config.excluded_labels,
                              batch_size=config.batch_size)
    if config.profile == "strict":
        return build_detector("combined", model=config.ner_model, batch_size=config.batch_size,
                              excluded_labels=tuple(x for x in config.strict_excluded_labels if x != "DATE"),
                              personal_dates_only=True, workers=config.workers)
    raise UnleakError(f"unknown PII profile {config.profile!r}")


def _load_builtins() -> None:
    import unleak.pii.detectors  # noqa: F401  (registers ner, patterns, combined)
