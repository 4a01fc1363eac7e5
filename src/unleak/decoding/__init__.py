"""Decoding with classifier-free guidance between two system prompts.

`cfg` holds the pure mixing maths (log and probability space), `sampling`
the pure next-token choice, and `generator` the batched decoder that runs the
positive and negative rows of every request in one forward pass per step.
"""

from unleak.decoding.cfg import cfg_mix, cfg_mix_logprobs, cfg_mix_probs, cfg_scores
from unleak.decoding.generator import CFGGenerator, GenerationRequest, GenerationResult
from unleak.decoding.sampling import sample_next_token

__all__ = [
    "CFGGenerator",
    "GenerationRequest",
    "GenerationResult",
    "cfg_mix",
    "cfg_mix_logprobs",
    "cfg_mix_probs",
    "cfg_scores",
    "sample_next_token",
]
