"""unleak: make a chat LLM stop revealing personal data it memorised.

Stages (each a CLI subcommand and a library function): corpus -> pii -> pairs
-> train (sft, orpo, negate) -> generate (CFG) -> eval -> serve, and `demo`.
"""

from unleak.errors import UnleakError

__version__ = "0.1.0"

__all__ = ["UnleakError", "__version__"]
