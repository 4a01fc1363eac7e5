"""PII detection behind one small interface: `detect(texts) -> list[list[Span]]`.

Detectors register by name (`ner`, `patterns`, `combined`) and are built with
`build_detector(name, **options)`; `detector_for_profile("original"|"strict")`
gives the method's counting rules.
"""

from unleak.pii.base import Detector, Span, build_detector, canonical_type, detector_for_profile, register_detector

__all__ = ["Detector", "Span", "build_detector", "canonical_type", "detector_for_profile", "register_detector"]
