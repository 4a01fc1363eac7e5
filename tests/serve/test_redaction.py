"""The served answers' output filter: segmentation by hand, streamed pieces adding up to the whole answer's
filtering, the real detectors on real PII, and a live server whose policy filters its answers."""

from __future__ import annotations

import re
from collections import Counter

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unleak.config import REDACT_TYPE_NAMES, GuidanceConfig, SamplingConfig
from unleak.decoding.generator import GenerationRequest
from unleak.errors import UnleakError
from unleak.pii.base import Span
from unleak.serve.app import build_server_generator, create_app
from unleak.serve.background import live_server
from unleak.serve.policies import policies_from_dict
from unleak.serve.redaction import OutputRedactor, StreamRedactor, complete_length, segments

from tests.serve.test_serve import MSGS, prometheus_samples

TEMPLATE = "[REDACTED {name}]"


class WordDetector:
    """Every run of three or more ASCII letters is a PERSON (a stand-in that always finds something)."""

    name = "words"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def detect(self, texts: list[str]) -> list[list[Span]]:
        self.calls.append(list(texts))
        return [[Span(m.start(), m.end(), "PERSON", m.group(), self.name) for m in re.finditer(r"[A-Za-z]{3,}", t)]
                for t in texts]


def test_segments_by_hand():
    text = 'He said "stop." Then\n\nhe left!  Call 555.0134 now? ok'
    assert segments(text) == ['He said "stop." ', "Then\n\n", "he left!  ", "Call 555.0134 now? ", "ok"]
    assert "".join(segments(text)) == text and segments("") == []
    assert complete_length("One. Two") == 5  # "One. " is whole
    assert complete_length("One. ") == 0  # the space may go on: not yet whole
    assert complete_length("555.0134") == 0  # a dot inside a number ends nothing


def test_whole_answers_are_filtered_segment_by_segment():
    detector = WordDetector()
    redactor = OutputRedactor(detector, TEMPLATE, REDACT_TYPE_NAMES)
    text, labels = redactor.redact("Hi Bob. Ann lives at 12 Oak St")
    assert text == "Hi [REDACTED NAME]. [REDACTED NAME] [REDACTED NAME] at 12 [REDACTED NAME] St"
    assert labels == Counter({"PERSON": 4}) and detector.calls == [["Hi Bob. ", "Ann lives at 12 Oak St"]]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab .!?\n\"'", max_size=60), st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_streamed_pieces_add_up_to_the_whole_answer_filtered(text, cuts):
    redactor = OutputRedactor(WordDetector(), TEMPLATE, REDACT_TYPE_NAMES)
    stream, pieces, at = StreamRedactor(redactor), [], 0
    for n in cuts * 10:
        if at >= len(text):
            break
        pieces.append(stream.feed(text[at:at + n]))
        at += n
    pieces.append(stream.feed(text[at:]))
    pieces.append(stream.close())
    whole, labels = redactor.redact(text)
    assert "".join(pieces) == whole and stream.labels == labels


def test_the_real_detectors_replace_real_pii():
    from unleak.config import PIIConfig
    from unleak.pii.base import detector_for_profile

    redactor = OutputRedactor(detector_for_profile(PIIConfig(profile="strict")), TEMPLATE, REDACT_TYPE_NAMES)
    text, labels = redactor.redact("Sure, Jamie Leyden. Call me at 573-500-4438 or write to jamie@example.com.")
    assert "Leyden" not in text and "4438" not in text and "jamie@" not in text
    assert "[REDACTED NAME]" in text and "[REDACTED PHONE NUMBER]" in text and "[REDACTED EMAIL ADDRESS]" in text
    assert labels["PERSON"] >= 1 and labels["PHONE_NUMBER"] == 1


def test_policy_settings_of_the_filter_are_checked():
    with pytest.raises(UnleakError, match="redact_output must be one of original, strict"):
        policies_from_dict({"policies": {"p": {"redact_output": "everything"}}, "keys": {"k": "p"}})
    with pytest.raises(UnleakError, match="redact_output and max_top_logprobs exclude each other"):
        policies_from_dict({"policies": {"p": {"redact_output": "strict", "max_top_logprobs": 2}},
                            "keys": {"k": "p"}})


@pytest.fixture(scope="module")
def filtered(tiny_model_dir, adapter_dir):
    """A server whose `filtered` policy runs the word detector on its answers (`plain`: the same, unfiltered)."""
    import unleak.pii.base

    generator = build_server_generator(str(tiny_model_dir), {"unleak": str(adapter_dir)}, max_batch=8)
    generator.eos_ids = set()  # random weights: decode the full budget
    mp = pytest.MonkeyPatch()
    mp.setattr(unleak.pii.base, "detector_for_profile", lambda config: WordDetector())
    policies = policies_from_dict({
        "policies": {"filtered": {"adapter": "unleak", "guidance_scale": 3.0, "redact_output": "strict"},
                     "plain": {"adapter": "unleak", "guidance_scale": 3.0}},
        "keys": {"sk-filtered": "filtered", "sk-plain": "plain"}}, {"unleak"})
    app = create_app(generator, policies, model_name="tiny")
    mp.undo()
    with live_server(app) as url:
        yield url, generator


def test_a_filtering_policy_serves_the_filtered_answer_whole_and_streamed(filtered):
    url, generator = filtered
    redactor = OutputRedactor(WordDetector(), TEMPLATE, REDACT_TYPE_NAMES)
    raw = generator.generate([GenerationRequest(messages=MSGS, guidance=GuidanceConfig(3.0, "prob"),
                                                sampling=SamplingConfig(max_new_tokens=40), adapter="unleak")])[0].text
    expected, labels = redactor.redact(raw)
    assert expected != raw and labels  # the filter has something to do
    plain = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-plain", max_retries=0)
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-filtered", max_retries=0)
    assert plain.chat.completions.create(model="tiny", messages=MSGS, max_tokens=40).choices[0].message.content \
        == raw
    resp = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=40)
    assert resp.choices[0].message.content == expected and resp.usage.completion_tokens == 40
    chunks = list(c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=40, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.PermissionDeniedError):  # the tokens' log-probabilities would show the raw text
        c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, logprobs=True)
    samples = prometheus_samples(httpx.get(f"{url}/metrics").text)
    assert samples[("unleak_redacted_spans_total", (("policy", "filtered"), ("type", "NAME")))] \
        == 2 * labels["PERSON"]
