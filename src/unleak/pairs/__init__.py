"""Preference pairs without a reward model: samples per PII location, candidate generators, verification."""

from unleak.pairs.build import build_preference_pairs, cfg_variant
from unleak.pairs.generators import CandidateRequest, LocalCandidateGenerator, OpenAICandidateGenerator
from unleak.pairs.samples import Sample, build_samples

__all__ = ["build_preference_pairs", "cfg_variant", "CandidateRequest", "LocalCandidateGenerator",
           "OpenAICandidateGenerator", "Sample", "build_samples"]
