"""unleak: make a chat LLM stop revealing personal data it memorised.

Stages (each a CLI subcommand and a library function): corpus -> pii -> pairs
-> train (sft, orpo, negate) -> generate (CFG) -> eval -> serve, and `demo`.
"""

from unleak.errors import UnleakError

__version__ = "0.1.0"


def query(prompt: str, **overrides) -> str:
    """The LLM-PC `query(prompt)` interface: see `unleak.decoding.api.query`."""
    from unleak.decoding.api import query as _query

    return _query(prompt, **overrides)


__all__ = ["UnleakError", "__version__", "query"]
