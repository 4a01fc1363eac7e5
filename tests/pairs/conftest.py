"""Fixtures of the pairs tests: a small synthetic corpus, split."""

from __future__ import annotations

from pathlib import Path

import pytest

from unleak.corpus.store import save_corpus, split_corpus
from unleak.corpus.synth import synthesize_corpus


@pytest.fixture()
def corpus_dir(tmp_path) -> Path:
    d = tmp_path / "corpus"
    save_corpus(d, synthesize_corpus(16, seed=5), {"generator": "test"})
    split_corpus(d, 0.25, seed=0)
    return d
