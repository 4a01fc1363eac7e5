"""General requests: the embedded set, placeholders told apart, and the evaluation's general columns."""

from __future__ import annotations

import json
import math
import re

import pytest

from unleak.config import GENERAL_EVAL_REQUESTS, GENERAL_TOPICS
from unleak.errors import UnleakError
from unleak.eval.general import general_requests, holds_placeholder


def test_embedded_requests_are_distinct_and_share_no_keep_topic():
    assert len(GENERAL_EVAL_REQUESTS) == len(set(GENERAL_EVAL_REQUESTS)) == 48
    for request in GENERAL_EVAL_REQUESTS:
        assert not [t for t in GENERAL_TOPICS if re.search(rf"\b{re.escape(t)}\b", request, re.I)], request
    assert general_requests(2) == [[{"role": "user", "content": GENERAL_EVAL_REQUESTS[0]}],
                                   [{"role": "user", "content": GENERAL_EVAL_REQUESTS[1]}]]
    assert len(general_requests(None)) == 48


def test_requests_from_a_file(tmp_path):
    txt = tmp_path / "r.txt"
    txt.write_text("How do tides work?\n\nWhat is a verb?\nName a colour.\n")
    assert general_requests(2, str(txt)) == [[{"role": "user", "content": "How do tides work?"}],
                                             [{"role": "user", "content": "What is a verb?"}]]
    assert len(general_requests(None, str(txt))) == 3
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UnleakError, match="empty.txt: no requests"):
        general_requests(4, str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok?"}\n{"text": "no"}\n')
    with pytest.raises(UnleakError, match="bad.jsonl:2: needs 'prompt'"):
        general_requests(4, str(bad))


@pytest.mark.parametrize("text, template, held", [
    ("Sure, [REDACTED NAME] can help.", "[REDACTED {name}]", True),
    ("[REDACTED PHONE NUMBER]", "[REDACTED {name}]", True),
    ("Then send it to [REDACTED ORGANIZ", "[REDACTED {name}]", True),  # cut off by the answer's length
    ("Then call [RED", "[REDACTED {name}]", True),
    ("Then call [REDACTED", "[REDACTED {name}]", True),
    ("Then call [RE", "[REDACTED {name}]", False),  # too little of it to tell
    ("Then call [REDACTED NAME] or [x", "[REDACTED {name}]", True),
    ("Use array[i] in the loop [1].", "[REDACTED {name}]", False),
    ("A list [REDUCED] here", "[REDACTED {name}]", False),
    ("Bees make honey from nectar.", "[REDACTED {name}]", False),
    ("Call [NAME] now.", "[{type}]", True),
    ("Call [NAM", "[{type}]", False),  # a template opening with its field: whole ones only
    ("Hi <NAME-1>!", "<{placeholder}>", True),
])
def test_holds_placeholder(text, template, held):
    assert holds_placeholder(text, template) is held


def test_spilled_values_by_hand():
    from unleak.eval.general import spilled_values

    values = frozenset({"fields", "leyden", "leyden.j@yahoo.com", "573.500.4438", "erinstad", "jamie-leigh",
                        "16 andrew motorway, justinland"})
    assert spilled_values(["It spans many fields of study.",  # the common word, not the surname Fields
                           "Leyden, the old town with sunshine.", "Call 573.500.4438 now.",
                           "Mail leyden.j@yahoo.com.",  # the address and the name in it: one value
                           "erinstad is lower-case", "Jamie-Leigh and jamie-leigh", "At 16 Andrew Motorway, Justinland.",
                           "Nothing here."], values) == [
        [], ["Leyden"], ["573.500.4438"], ["leyden.j@yahoo.com"], [], ["Jamie-Leigh"],
        ["16 Andrew Motorway, Justinland"], []]


def test_eval_settings_refuse_bad_general_values(tmp_path):
    from unleak.eval.run import EvalSettings

    with pytest.raises(UnleakError, match="general must be >= 0"):
        EvalSettings(general=-2)
    with pytest.raises(UnleakError, match="general_max_new_tokens must be >= 1"):
        EvalSettings(general_max_new_tokens=0)
    with pytest.raises(UnleakError, match="general source .*nope.txt: no such file"):
        EvalSettings(general_source=str(tmp_path / "nope.txt"))
    with pytest.raises(UnleakError, match="placeholder_template"):
        EvalSettings(placeholder_template="[{who}]")


def test_general_answers_in_the_evaluation_and_report(tiny_model_dir, tmp_path):
    from unleak.chat import render_prompt
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.decoding.generator import CFGGenerator, GenerationRequest
    from unleak.eval.fluency import answer_perplexity
    from unleak.eval.report import write_report
    from unleak.eval.run import EvalConfiguration, EvalSettings, run_evaluation
    from unleak.config import GuidanceConfig, SamplingConfig
    from unleak.models import load_model, load_tokenizer

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(8, seed=3), {})
    split_corpus(corpus, 0.4, seed=0)
    model = str(tiny_model_dir)
    confs = [EvalConfiguration("raw", model, served=False),
             EvalConfiguration("g3", model, guidance_scale=3.0, cfg_space="prob")]
    # the tiny model writes no placeholder: this template is matched by any word, so the count is not 0
    settings = EvalSettings(leakage_max_new_tokens=4, test_limit=2, attack_limit=2, reference_model=model,
                            general=3, general_max_new_tokens=5, placeholder_template="{type}")
    out = tmp_path / "e"
    results = run_evaluation(corpus, confs, out, settings, progress=False)
    tok, m = load_tokenizer(model), load_model(model)
    gen = CFGGenerator(m, tok)
    dialogs = general_requests(3)
    for r in results:
        g = r["general"]
        rows = [json.loads(line) for line in (out / "answers" / f"{r['name']}.jsonl").read_text().splitlines()]
        general = [x for x in rows if x["kind"] == "general"]
        assert [x["prompt"] for x in general] == list(GENERAL_EVAL_REQUESTS[:3])
        assert g["requests"] == 3 and g["max_new_tokens"] == 5 and 0 < g["tokens"] <= 15
        assert g["placeholders"] == sum(x["placeholder"] for x in general) > 0
        assert g["placeholder_share"] == pytest.approx(g["placeholders"] / 3, abs=1e-4)
        assert all(x["placeholder"] == holds_placeholder(x["response"], "{type}") for x in general)
        assert g["known_values"] == sum(len(x["known_values"]) for x in general)
        assert g["answers_with_known"] == sum(1 for x in general if x["known_values"])
        # each answer as its row is served (the defence behind its system prompts and under its guidance, the
        # raw model on the bare request), and the perplexity is of those answers after the bare request
        conf = next(c for c in confs if c.name == r["name"])
        sampling = SamplingConfig(max_new_tokens=5)
        replies = []
        for d, x in zip(dialogs, general, strict=True):
            if conf.served:
                req = GenerationRequest(messages=d, guidance=GuidanceConfig(3.0, "prob"), sampling=sampling)
            else:
                ids = tok(render_prompt(tok, [{"role": "system", "content": ""}, *d]),
                          add_special_tokens=False)["input_ids"]
                req = GenerationRequest(input_ids=ids, negative_input_ids=ids, sampling=sampling)
            [alone] = gen.generate([req])
            assert alone.text == x["response"]
            replies.append(list(alone.token_ids))
        prompts = [tok(render_prompt(tok, d), add_special_tokens=False)["input_ids"] for d in dialogs]
        expected = answer_perplexity(m, tok, prompts, replies)
        assert g["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-4) and math.isfinite(g["perplexity"])
    report = write_report(out)
    md = (out / "report.md").read_text()
    assert "general requests: perplexity" in md and "3 general requests (5 tokens an answer)" in md
    row = next(x for x in report["rows"] if x["configuration"] == "g3")
    assert row["general_perplexity"] == results[1]["general"]["perplexity"]
    assert f"| {100 * row['general_placeholders']:.1f} |" in next(line for line in md.splitlines()
                                                                    if line.startswith("| g3 |"))
    # off: no general answers, the columns empty
    off = run_evaluation(corpus, confs[:1], tmp_path / "off", EvalSettings(
        leakage_max_new_tokens=4, test_limit=2, attack_limit=2, reference_model=model, general=0), progress=False)
    assert off[0]["general"] is None
    rows = (tmp_path / "off" / "answers" / "raw.jsonl").read_text()
    assert '"kind": "general"' not in rows
    assert write_report(tmp_path / "off")["rows"][0]["general_perplexity"] is None
