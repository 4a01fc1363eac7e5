"""An evaluation's generation, journaled: an interrupted run resumes without generating again what it had."""

from __future__ import annotations

import json

import pytest

from unleak.config import GuidanceConfig, SamplingConfig
from unleak.decoding.generator import GenerationRequest, GenerationResult
from unleak.eval.journal import CHUNK_BATCHES, JournaledGenerator, request_key


class Echo:
    """A generator that answers each request with its prompt text reversed, and records what it was asked."""

    max_batch_requests = 2
    tokenizer = "tok"

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def generate_grouped(self, groups, on_batch=None):
        self.calls.append(len(groups))
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        out = [[GenerationResult(r.text[::-1], [len(r.text)], "cancelled" if r.text == "x" else "stop",
                                 r.guidance.guidance_scale, r.guidance.cfg_space, 1) for r in g] for g in groups]
        if on_batch is not None:
            on_batch(len(groups))
        return out


def groups_of(texts):
    return [[GenerationRequest(text=t, guidance=GuidanceConfig(g, "prob"), sampling=SamplingConfig(max_new_tokens=4))
             for g in (1.0, 3.0)] for t in texts]


def test_a_journal_resumes_where_the_generator_stopped(tmp_path):
    texts = [f"prompt {i}" for i in range(20)]
    chunk = CHUNK_BATCHES * Echo.max_batch_requests  # 8 groups
    path = tmp_path / "j.jsonl"
    broken = JournaledGenerator(Echo(fail_on_call=2), path)
    assert broken.tokenizer == "tok" and broken.chunk_groups == chunk  # the inner generator's attributes
    with pytest.raises(KeyboardInterrupt):
        broken.generate_grouped(groups_of(texts))
    assert len(path.read_text().splitlines()) == 2 * chunk  # the first chunk, both settings of each prompt
    with path.open("a") as fh:
        fh.write('{"key": "torn')  # a writer killed mid-line
    inner, progress = Echo(), []
    resumed = JournaledGenerator(inner, path)
    assert resumed.resumed == 2 * chunk
    got = resumed.generate_grouped(groups_of(texts), on_batch=progress.append)
    assert inner.calls == [chunk, len(texts) - 2 * chunk]  # only what the journal lacked, in chunks
    assert sum(progress) == len(texts)
    straight = Echo().generate_grouped(groups_of(texts))
    assert [[(r.text, r.token_ids, r.guidance_scale) for r in g] for g in got] == \
        [[(r.text, r.token_ids, r.guidance_scale) for r in g] for g in straight]
    again = Echo()
    JournaledGenerator(again, path).generate_grouped(groups_of(texts))
    assert again.calls == []  # everything journaled, the torn line closed and skipped
    cancelled = Echo()
    JournaledGenerator(cancelled, path).generate_grouped(groups_of(["x"]))
    JournaledGenerator(cancelled, path).generate_grouped(groups_of(["x"]))
    assert cancelled.calls == [1, 1]  # a cancelled result is never journaled
    a, b = groups_of(["same"])[0]
    assert request_key(a) != request_key(b) and request_key(a) == request_key(groups_of(["same"])[0][0])


def test_an_interrupted_evaluation_resumes_from_its_journal(tiny_model_dir, tmp_path, monkeypatch):
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.decoding.generator import CFGGenerator
    from unleak.eval.run import EvalConfiguration, EvalSettings, run_evaluation

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(10, seed=2), {})
    split_corpus(corpus, 0.3, seed=0)
    confs = [EvalConfiguration("g1", str(tiny_model_dir)),
             EvalConfiguration("g3", str(tiny_model_dir), guidance_scale=3.0, cfg_space="log")]
    settings = EvalSettings(leakage_max_new_tokens=6, attack_limit=20, batch_size=2,
                            reference_model=str(tiny_model_dir), reference_template=None)
    whole = run_evaluation(corpus, confs, tmp_path / "a", settings, progress=False)

    asked: list[int] = []
    fail_on = [3]
    original = CFGGenerator.generate_grouped

    def counting(self, groups, on_batch=None):
        asked.append(len(groups))
        if len(asked) == fail_on[0]:
            raise KeyboardInterrupt  # killed in the middle of the attack prompts
        return original(self, groups, on_batch)

    monkeypatch.setattr(CFGGenerator, "generate_grouped", counting)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(corpus, confs, out, settings, progress=False)
    [journal] = (out / "journal").glob("*.jsonl")
    assert not list((out / "configs").glob("*.json")) and len(journal.read_text().splitlines()) > 0
    before = sum(asked[:2])  # groups generated and journaled before the interruption
    assert before > 0
    asked.clear()
    fail_on[0] = 0
    resumed = run_evaluation(corpus, confs, out, settings, progress=False)
    asked_again = sum(asked)
    asked.clear()
    run_evaluation(corpus, confs, tmp_path / "c2", settings, progress=False)  # uninterrupted, counted
    assert asked_again == sum(asked) - before  # only what the interrupted run had not generated
    assert not journal.parent.exists()  # gone once the configurations are saved
    for a, b in zip(whole, resumed, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        assert (tmp_path / "a" / "answers" / f"{a['name']}.jsonl").read_text() == \
            (out / "answers" / f"{a['name']}.jsonl").read_text()
    assert json.loads((out / "configs" / "g3.json").read_text())["attack"]["attempts"] == 20


class Interrupting:
    """A model that counts its forward calls and is killed at call `fail_at` (0: never)."""

    def __init__(self, model, fail_at: int = 0) -> None:
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_multiple_choice_scoring_resumes_from_its_journal(tiny_model_dir, adapter_dir, tmp_path):
    """Cloze and letters, killed mid-pass: the rerun scores only the batches the journal lacks and returns
    exactly what an uninterrupted pass does; each negative branch (adapter on or off) keeps its own scores."""
    from unleak.chat import system_header_ids
    from unleak.config import PromptConfig
    from unleak.eval.utility import (multiple_choice_cloze_scores, multiple_choice_letter_logprobs,
                                     served_multiple_choice_predictions)
    from unleak.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), adapter=str(adapter_dir), merge=False)
    qs = [{"subject": "s", "question": f"Which is {'x' * (i + 1)}?", "answer": i % 4,
           "choices": ["one", "two words", "three more words", "four"][: 3 + i % 2]} for i in range(10)]
    prompts = PromptConfig()
    heads = [system_header_ids(tok, prompts.positive), system_header_ids(tok, prompts.negative)]
    guidances = [GuidanceConfig(1.0), GuidanceConfig(3.0, "prob"), GuidanceConfig(3.0, "log")]

    def cloze(m, journal=None):
        return multiple_choice_cloze_scores(m, tok, qs, guidances, heads, batch_size=8, progress=False,
                                            journal=journal)

    def letters(m, journal=None):
        return multiple_choice_letter_logprobs(m, tok, qs, batch_size=2, progress=False, head=heads[0],
                                               journal=journal)

    for score, calls_per_batch in ((cloze, 2), (letters, 1)):
        straight = Interrupting(model)
        whole = score(straight, tmp_path / f"{score.__name__}-whole.jsonl")
        batches = len((tmp_path / f"{score.__name__}-whole.jsonl").read_text().splitlines())
        prefix = straight.calls - calls_per_batch * batches  # letters: the shared prefix, once
        assert batches > CHUNK_BATCHES and prefix == (score is letters)
        path = tmp_path / f"{score.__name__}.jsonl"
        killed = Interrupting(model, fail_at=straight.calls - calls_per_batch + 1)  # in the last batch
        with pytest.raises(KeyboardInterrupt):
            score(killed, path)
        journaled = (batches - 1) // CHUNK_BATCHES * CHUNK_BATCHES  # appended a chunk of batches at a time
        assert journaled > 0 and len(path.read_text().splitlines()) == journaled
        resumed = Interrupting(model)
        assert score(resumed, path) == whole == score(model)  # the journal's floats are the pass's own
        assert resumed.calls == prefix + calls_per_batch * (batches - journaled)  # only what it lacked
        again = Interrupting(model)
        assert score(again, path) == whole and again.calls == 0
        other = Interrupting(model)
        assert len(multiple_choice_cloze_scores(other, tok, qs[:4], guidances, heads, batch_size=8,
                                                progress=False, journal=path)[0]) == 4
        assert other.calls > 0  # another pass (other questions) does not take this one's scores

    # the negative branch with and without the adapter, in one journal: each keeps its own scores
    served = [GuidanceConfig(1.0), GuidanceConfig(5.0, "log"), GuidanceConfig(5.0, "log")]
    for fmt in ("cloze", "letters"):
        kwargs = {"batch_size": 8, "progress": False, "mc_format": fmt, "negative_adapter": [True, True, False]}
        plain = served_multiple_choice_predictions(model, tok, qs, served, prompts, **kwargs)
        assert plain[1] != plain[2]
        path = tmp_path / f"served-{fmt}.jsonl"
        assert served_multiple_choice_predictions(model, tok, qs, served, prompts, journal=path, **kwargs) == \
            plain == served_multiple_choice_predictions(model, tok, qs, served, prompts, journal=path, **kwargs)


def test_an_evaluation_interrupted_in_its_multiple_choice_scoring_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.eval.journal import BatchJournal
    from unleak.eval.run import EvalConfiguration, EvalSettings, run_evaluation

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(6, seed=1), {})
    split_corpus(corpus, 0.3, seed=0)
    mmlu = tmp_path / "mc.jsonl"
    mmlu.write_text("".join(json.dumps({"subject": "s", "question": f"Q{i}: {'why ' * i}?",
                                        "choices": ["a", "bb", "c c", "d"], "answer": i % 4}) + "\n"
                            for i in range(12)))
    confs = [EvalConfiguration("g1", str(tiny_model_dir)),
             EvalConfiguration("g3", str(tiny_model_dir), guidance_scale=3.0, cfg_space="prob")]
    settings = EvalSettings(leakage_max_new_tokens=4, test_limit=2, attack_limit=2, batch_size=2, mmlu=str(mmlu),
                            mmlu_limit=None, reference_model=str(tiny_model_dir), reference_template=None)
    whole = run_evaluation(corpus, confs, tmp_path / "a", settings, progress=False)

    puts, resumed_with = [], []
    put, init = BatchJournal.put, BatchJournal.__init__

    def killed_at_the_fifth(self, batch, scores):
        puts.append(batch)
        if len(puts) == 5:
            raise KeyboardInterrupt
        put(self, batch, scores)

    def counting_init(self, *args):
        init(self, *args)
        resumed_with.append(len(self.done))

    monkeypatch.setattr(BatchJournal, "put", killed_at_the_fifth)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(corpus, confs, out, settings, progress=False)
    assert len(list((out / "journal").glob("*.scores.jsonl"))) == 1 and not list((out / "configs").glob("*"))
    monkeypatch.setattr(BatchJournal, "put", put)
    monkeypatch.setattr(BatchJournal, "__init__", counting_init)
    resumed = run_evaluation(corpus, confs, out, settings, progress=False)
    assert resumed_with == [CHUNK_BATCHES]  # the batches journaled before the interruption, not scored again
    assert not (out / "journal").exists()
    for a, b in zip(whole, resumed, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
        assert a["utility"]["n"] == 12
