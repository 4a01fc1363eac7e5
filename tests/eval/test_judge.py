"""Generative utility: the answer request, the judges (offline matcher, the original's LLM judge over HTTP),
and the generative format through the whole evaluation."""

from __future__ import annotations

import dataclasses
import json

import openai
import pytest

from unleak.config import JUDGE_PROMPT, GuidanceConfig, JudgeConfig, SamplingConfig
from unleak.errors import UnleakError
from unleak.eval.judge import (JudgeItem, MatchJudge, OpenAIJudge, Verdict, answer_request, build_judge, match_choice,
                               parse_verdict)


def test_parse_verdict_reads_replies_as_the_original_did():
    assert parse_verdict("Correct") == parse_verdict(' "Correct".') == "correct"
    assert parse_verdict("Incorrect") == parse_verdict("Incorrect, the answer is 3.") == "incorrect"
    assert parse_verdict("Can't tell") == parse_verdict("") == "unknown"
    assert parse_verdict("correct") == "unknown"  # the original's test is case-sensitive


def test_match_choice_by_hand():
    choices = ["Paris", "Paris, Texas", "London", "the Moon"]
    assert match_choice("Paris", choices) == 0
    assert match_choice("It is paris, texas.", choices) == 1  # "Paris" inside the named "Paris, Texas"
    assert match_choice("Paris or London", choices) is None  # two choices named
    assert match_choice("2. Paris, Texas", choices) == 1
    assert match_choice("3", choices) == 2 and match_choice("Option 4: neither", choices) == 3
    assert match_choice("The answer is (3)", choices) == 2
    assert match_choice("5", choices) is None and match_choice("I am not sure.", choices) is None
    assert match_choice("the moonlight", choices) is None  # whole words only
    assert match_choice("4", ["2", "4", "6", "8"]) == 1  # a choice's own text before its number


def test_match_judge_and_answer_request():
    items = [JudgeItem("Capital of France?", ("Paris", "London"), 0, r) for r in ("Paris.", "2. London", "both")]
    assert MatchJudge().judge(items) == [Verdict("correct", "1"), Verdict("incorrect", "2"), Verdict("unknown", "")]
    assert answer_request(" Capital of France? ", ["Paris", "London"], JudgeConfig()) == \
        "Provide a short answer to the question: Capital of France?\nOptions:\n1. Paris\n2. London"
    assert isinstance(build_judge(JudgeConfig()), MatchJudge)


def test_judge_config_refuses_bad_values():
    with pytest.raises(UnleakError, match="judge prompt must contain {answer}"):
        JudgeConfig(prompt="Question: {question} Correct answer: {correct_answer}")
    with pytest.raises(UnleakError, match="answer_prompt must contain {options}"):
        JudgeConfig(answer_prompt="{question}")
    with pytest.raises(UnleakError, match=">= 1"):
        JudgeConfig(concurrency=0)
    with pytest.raises(UnleakError, match="needs an endpoint URL"):
        OpenAIJudge(JudgeConfig())


def test_llm_judge_over_a_live_openai_compatible_server(tiny_model_dir, monkeypatch):
    """The judge's request reaches a real server through the real `openai` client: its reply is the
    server's greedy answer to the original's judge prompt, read with the original's rule."""
    from unleak.decoding.generator import GenerationRequest
    from unleak.serve.app import build_server_generator, create_app
    from unleak.serve.background import live_server
    from unleak.serve.policies import policies_from_dict

    gen = build_server_generator(str(tiny_model_dir), {}, max_batch=4)
    policies = policies_from_dict({"policies": {"judge": {"adapter": None, "guidance_scale": 1.0, "max_tokens": 16}},
                                   "keys": {"sk-judge": "judge"}})
    monkeypatch.setenv("UNLEAK_TEST_JUDGE_KEY", "sk-judge")
    items = [JudgeItem("Capital of France?", ("Paris", "London", "Rome"), 0, "Paris"),
             JudgeItem("2 + 2?", ("3", "4"), 1, "It is 5."),
             JudgeItem("Largest planet?", ("Mars", "Jupiter"), 1, "")]
    with live_server(create_app(gen, policies, model_name="judge-model")) as url:
        config = JudgeConfig(url=f"{url}/v1", model="judge-model", api_key_env="UNLEAK_TEST_JUDGE_KEY",
                             concurrency=2, reply_max_tokens=8)
        judge = OpenAIJudge(config)
        verdicts = judge.judge(items)
        wrong_key = OpenAIJudge(dataclasses.replace(config, api_key_env="UNLEAK_TEST_NO_SUCH_KEY"),
                                client=openai.OpenAI(base_url=f"{url}/v1", api_key="sk-nobody", max_retries=0))
        with pytest.raises(UnleakError, match=f"judge {url}/v1: AuthenticationError"):
            wrong_key.judge(items[:1])
    assert judge.name == f"llm:judge-model@{url}/v1"
    user = judge.messages(items[0])[1]["content"]
    assert user == JUDGE_PROMPT.format(question="Capital of France?\nAnswer options:\n1. Paris\n2. London\n3. Rome",
                                       correct_answer="Paris", answer="Paris")
    direct = gen.generate([GenerationRequest(messages=judge.messages(x), guidance=GuidanceConfig(1.0),
                                             sampling=SamplingConfig(max_new_tokens=8), adapter=False)
                           for x in items])
    assert [v.basis for v in verdicts] == [r.text.strip() for r in direct]
    assert [v.label for v in verdicts] == [parse_verdict(r.text) for r in direct]


def test_generative_utility_through_the_evaluation(tiny_model_dir, tmp_path):
    from unleak.chat import render_prompt
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.decoding.generator import CFGGenerator, GenerationRequest
    from unleak.eval.report import write_report
    from unleak.eval.run import EvalConfiguration, EvalSettings, run_evaluation
    from unleak.models import load_model, load_tokenizer

    corpus = save_corpus(tmp_path / "c", synthesize_corpus(8, seed=3), {})
    split_corpus(corpus, 0.4, seed=0)
    model = str(tiny_model_dir)
    questions = [{"subject": "s", "question": f"Q{i}?", "choices": ["alpha", "beta", "gamma"], "answer": i % 3}
                 for i in range(5)]
    mmlu = tmp_path / "mc.jsonl"
    mmlu.write_text("".join(json.dumps(q) + "\n" for q in questions))
    confs = [EvalConfiguration("raw", model, served=False), EvalConfiguration("g1", model),
             EvalConfiguration("g3-prob", model, guidance_scale=3.0, cfg_space="prob")]
    judge = JudgeConfig(answer_max_new_tokens=5)
    settings = EvalSettings(leakage_max_new_tokens=4, attack_limit=2, reference_model=model, mmlu=str(mmlu),
                            mmlu_limit=None, mmlu_format="generative", judge=judge, reference_template=None)
    out = tmp_path / "e"
    results = run_evaluation(corpus, confs, out, settings, progress=False)
    tok = load_tokenizer(model)
    gen = CFGGenerator(load_model(model), tok)
    sampling = SamplingConfig(max_new_tokens=5)
    for r, conf in zip(results, confs):
        u = r["utility"]
        assert (u["format"], u["judge"], u["n"]) == ("generative", "match", 5)
        assert sum(u["verdicts"].values()) == 5
        rows = [json.loads(x) for x in (out / "answers" / f"{conf.name}.jsonl").read_text().splitlines()]
        rows = [x for x in rows if x["kind"] == "utility"]
        assert [x["question"] for x in rows] == list(range(5))
        # the saved responses are each question's answer decoded alone, as served (or the original's bare request)
        users = [{"role": "user", "content": answer_request(q["question"], q["choices"], judge)} for q in questions]
        if conf.served:
            alone = [GenerationRequest(messages=[m], guidance=GuidanceConfig(conf.guidance_scale, conf.cfg_space),
                                       sampling=sampling) for m in users]
        else:
            ids = [tok(render_prompt(tok, [{"role": "system", "content": ""}, m]), add_special_tokens=False)
                   ["input_ids"] for m in users]
            alone = [GenerationRequest(input_ids=i, guidance=GuidanceConfig(1.0), sampling=sampling) for i in ids]
        assert [x["response"] for x in rows] == [gen.generate([a])[0].text for a in alone]
        verdicts = MatchJudge().judge([JudgeItem(q["question"], tuple(q["choices"]), q["answer"], x["response"])
                                       for q, x in zip(questions, rows)])
        assert [x["verdict"] for x in rows] == [v.label for v in verdicts]
        assert u["correct"] == [v.label == "correct" for v in verdicts]
    write_report(out)
    assert "a short greedy answer to the original's request, judged offline" in (out / "report.md").read_text()


def test_judge_settings_key_results_only_for_generative_utility():
    from unleak.eval.run import EvalSettings

    other = JudgeConfig(url="http://judge/v1")
    assert EvalSettings(judge=other).identity() == EvalSettings().identity()
    assert EvalSettings(mmlu_format="generative", judge=other).identity() != \
        EvalSettings(mmlu_format="generative").identity()
