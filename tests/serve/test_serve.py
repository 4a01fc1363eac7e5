"""The OpenAI-compatible server, tested with the real `openai` client against a live uvicorn (tiny model)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unleak.config import GuidanceConfig, SamplingConfig
from unleak.decoding.generator import GenerationRequest
from unleak.errors import UnleakError
from unleak.serve.app import build_server_generator, create_app
from unleak.serve.background import live_server
from unleak.serve.batcher import Batcher, BatcherClosed
from unleak.serve.policies import key_hash, policies_from_dict

POLICIES = {
    "policies": {
        "public": {"adapter": "unleak", "guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 12},
        "internal": {"adapter": None, "guidance_scale": 1.0, "allow_override": True, "max_tokens": 12},
        "contrast": {"adapter": "unleak", "guidance_scale": 3.0, "negative": "base", "max_tokens": 12},
        "scored": {"adapter": None, "allow_override": True, "max_top_logprobs": 3, "max_tokens": 12},
    },
    "keys": {"sk-public": "public", "sk-contrast": "contrast", "sk-scored": "scored"},
    "key_hashes": {key_hash("sk-internal"): "internal"},
}
MSGS = [{"role": "user", "content": "Tell me about my neighbour."}]


@pytest.fixture(scope="module")
def generator(tiny_model_dir, adapter_dir):
    gen = build_server_generator(str(tiny_model_dir), {"unleak": str(adapter_dir)}, max_batch=8)
    gen.eos_ids = set()  # random weights: decode the full budget
    return gen


@pytest.fixture(scope="module")
def server(generator):
    app = create_app(generator, policies_from_dict(POLICIES, {"unleak"}), model_name="tiny")
    with live_server(app) as url:
        yield url


def client(url: str, key: str = "sk-public", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, **kw)


def direct(generator, adapter, g=1.0, space="prob", max_new=12, negative_adapter=None, messages=MSGS,
           **sampling) -> str:
    req = GenerationRequest(messages=messages, guidance=GuidanceConfig(g, space),
                            sampling=SamplingConfig(max_new_tokens=max_new, **sampling), adapter=adapter,
                            negative_adapter=negative_adapter)
    return generator.generate([req])[0].text


def test_plain_completion_follows_the_policy(server, generator):
    resp = client(server).chat.completions.create(model="tiny", messages=MSGS, max_tokens=50)
    assert resp.choices[0].message.content == direct(generator, "unleak", 3.0)  # policy: adapter, g=3
    assert resp.usage.completion_tokens == 12  # capped by the policy's max_tokens
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_adapter_switch_per_policy_changes_the_output(server, generator):
    internal = client(server, "sk-internal").chat.completions.create(model="tiny", messages=MSGS, max_tokens=8)
    assert internal.choices[0].message.content == direct(generator, False, 1.0, max_new=8)
    public = client(server).chat.completions.create(model="tiny", messages=MSGS, max_tokens=8)
    assert public.choices[0].message.content != internal.choices[0].message.content


def test_a_policy_can_guide_away_from_the_bare_model(server, generator):
    """`negative: base`: the negative rows run without the adapter; the answer differs from the method's."""
    resp = client(server, "sk-contrast").chat.completions.create(model="tiny", messages=MSGS, max_tokens=12)
    assert resp.choices[0].message.content == direct(generator, "unleak", 3.0, negative_adapter=False)
    assert resp.choices[0].message.content != direct(generator, "unleak", 3.0)
    with pytest.raises(UnleakError, match="policies.bad: .*negative 'base' needs an adapter"):
        policies_from_dict({"policies": {"bad": {"adapter": None, "negative": "base"}}}, {"unleak"})


def test_streaming_adds_up_to_the_plain_answer(server, generator):
    stream = client(server).chat.completions.create(model="tiny", messages=MSGS, stream=True, max_tokens=12)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct(generator, "unleak", 3.0)
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) > 3
    assert all(c.usage is None for c in chunks)  # not asked for


def test_n_choices_are_seeded_one_by_one(server, generator):
    """n = 3 sampled choices: choice i is what a call with seed + i gives alone; usage counts the prompt once
    and every choice's tokens; streamed, the chunks of each index add up to the same choices, and the usage
    comes in a last chunk without choices when `stream_options.include_usage` asks for it."""
    kw = dict(model="tiny", messages=MSGS, max_tokens=8, temperature=1.0, seed=11, n=3)
    resp = client(server, "sk-internal").chat.completions.create(**kw)
    texts = [c.message.content for c in resp.choices]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert texts == [direct(generator, False, max_new=8, temperature=1.0, seed=11 + i) for i in range(3)]
    assert len(set(texts)) > 1  # sampled with three seeds
    one = client(server, "sk-internal").chat.completions.create(**{**kw, "n": 1})
    assert resp.usage.prompt_tokens == one.usage.prompt_tokens and resp.usage.completion_tokens == 3 * 8
    streamed = {0: "", 1: "", 2: ""}
    finish = {}
    chunks = list(client(server, "sk-internal").chat.completions.create(
        **kw, stream=True, stream_options={"include_usage": True}))
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert [streamed[i] for i in range(3)] == texts and finish == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3 * 8  # include_usage, as OpenAI
    assert all(c.usage is None for c in chunks[:-1])
    with pytest.raises(openai.BadRequestError, match="more than this server queues"):
        client(server, "sk-internal").chat.completions.create(**{**kw, "n": 100})


@pytest.mark.parametrize("g,space", [(1.0, "prob"), (3.0, "prob"), (3.0, "log")])
def test_logprobs_are_those_of_the_served_distribution(server, generator, g, space):
    """Each token's log-probability and its 3 likeliest alternatives, recomputed from two plain forwards of the
    bare model (positive and negative prompt) through the CFG mix and a log-softmax; streamed, the same."""
    import torch

    from unleak.decoding.cfg import cfg_scores

    kw = dict(model="tiny", messages=MSGS, max_tokens=6, logprobs=True, top_logprobs=3,
              extra_body={"guidance_scale": g, "cfg_space": space})
    resp = client(server, "sk-scored").chat.completions.create(**kw)
    content = resp.choices[0].logprobs.content
    request = GenerationRequest(messages=MSGS, guidance=GuidanceConfig(g, space),
                                sampling=SamplingConfig(max_new_tokens=6), adapter=False, top_logprobs=3)
    result = generator.generate([request])[0]
    assert resp.choices[0].message.content == result.text and len(content) == len(result.token_ids) == 6
    enc = generator.encode(request)
    with torch.inference_mode(), generator.model.disable_adapter():
        def step_logits(prompt: list[int]) -> torch.Tensor:
            ids = torch.tensor([prompt + result.token_ids])
            return generator.model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) + 5].float()

        pos = step_logits(enc.pos)
        scores = cfg_scores(pos, step_logits(enc.neg), g, space) if g != 1 else pos
        expected = torch.log_softmax(scores, -1)
    for t, (token, entry) in enumerate(zip(result.token_ids, content)):
        assert entry.token == generator.tokenizer.decode([token])
        assert entry.logprob == pytest.approx(expected[t, token].item(), abs=1e-4)
        best = expected[t].topk(3)
        assert [x.logprob for x in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy took the likeliest
    streamed = [e for c in client(server, "sk-scored").chat.completions.create(**kw, stream=True)
                for choice in c.choices if choice.logprobs for e in choice.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_logprobs_only_where_the_policy_allows(server):
    """Refused by default (the alternatives at a placeholder can name the value held back), and beyond the
    policy's number of alternatives; `top_logprobs` alone is malformed; a plain request carries none."""
    with pytest.raises(openai.PermissionDeniedError, match="allows no log-probabilities"):
        client(server).chat.completions.create(model="tiny", messages=MSGS, logprobs=True)
    with pytest.raises(openai.PermissionDeniedError, match="at most 3 alternatives per token"):
        client(server, "sk-scored").chat.completions.create(model="tiny", messages=MSGS, logprobs=True,
                                                              top_logprobs=5)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client(server, "sk-scored").chat.completions.create(model="tiny", messages=MSGS, top_logprobs=2)
    plain = client(server, "sk-scored").chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
    assert plain.choices[0].logprobs is None
    with pytest.raises(UnleakError, match="max_top_logprobs must be 0-20"):
        policies_from_dict({"policies": {"p": {"max_top_logprobs": 21}}, "keys": {"k": "p"}})


RAW = "Please deliver the parcel to my flat; the courier has my phone"


def test_text_completions_continue_raw_text_behind_the_system_prompts(server, generator):
    """`/v1/completions` continues raw text as the extraction attack's served requests do (each system
    prompt's chat header, then the text): the same tokens as such a request, under the policy."""
    from unleak.chat import system_header_ids

    resp = client(server).completions.create(model="tiny", prompt=RAW, max_tokens=8)
    ids = generator.tokenizer(RAW, add_special_tokens=False)["input_ids"]
    pos = system_header_ids(generator.tokenizer, generator.prompts.positive) + ids
    neg = system_header_ids(generator.tokenizer, generator.prompts.negative) + ids
    attack = GenerationRequest(input_ids=pos, negative_input_ids=neg, guidance=GuidanceConfig(3.0, "prob"),
                               sampling=SamplingConfig(max_new_tokens=8), adapter="unleak")
    assert resp.object == "text_completion" and resp.choices[0].text == generator.generate([attack])[0].text
    assert resp.usage.prompt_tokens == len(pos) and resp.usage.completion_tokens == 8
    assert resp.choices[0].finish_reason == "length" and resp.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="echo and suffix are not supported"):
        client(server).completions.create(model="tiny", prompt=RAW, echo=True)
    with pytest.raises(openai.PermissionDeniedError, match="allows no log-probabilities"):
        client(server).completions.create(model="tiny", prompt=RAW, logprobs=1)


def test_text_completions_of_several_prompts_with_n_and_logprobs(server, generator):
    """Two prompts, n = 2, sampled with a seed: choice p * 2 + i is prompt p's under seed + i; the legacy
    logprobs shape (tokens, token_logprobs, top_logprobs, text_offset) holds the generator's values; streamed,
    each index's chunks add up to the same texts."""
    prompts = [RAW, "My account number is"]
    kw = dict(model="tiny", prompt=prompts, max_tokens=5, n=2, temperature=1.0, seed=3, logprobs=2)
    prompt_metric = ("unleak_prompt_tokens_total", (("policy", "scored"),))
    before = prometheus_samples(httpx.get(f"{server}/metrics").text).get(prompt_metric, 0.0)
    resp = client(server, "sk-scored").completions.create(**kw)
    after = prometheus_samples(httpx.get(f"{server}/metrics").text)[prompt_metric]
    assert after - before == resp.usage.prompt_tokens  # each prompt once, however many choices
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    for c in resp.choices:
        p, i = divmod(c.index, 2)
        alone = generator.generate([GenerationRequest(
            text=prompts[p], sampling=SamplingConfig(max_new_tokens=5, temperature=1.0, seed=3 + i),
            adapter=False, top_logprobs=2)])[0]
        assert c.text == alone.text
        lp = c.logprobs
        assert lp.token_logprobs == pytest.approx([e.logprob for e in alone.logprobs], abs=1e-5)
        assert lp.tokens == [generator.tokenizer.decode([e.token_id]) for e in alone.logprobs]
        assert all(len(top) <= 2 for top in lp.top_logprobs)
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    streamed = {k: "" for k in range(4)}
    for chunk in client(server, "sk-scored").completions.create(**kw, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert [streamed[k] for k in range(4)] == [c.text for c in resp.choices]


def test_extra_body_guidance_only_where_allowed(server, generator):
    resp = client(server, "sk-internal").chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=6, extra_body={"guidance_scale": 2.0, "cfg_space": "log"})
    assert resp.choices[0].message.content == direct(generator, False, 2.0, "log", max_new=6)
    with pytest.raises(openai.PermissionDeniedError):
        client(server).chat.completions.create(model="tiny", messages=MSGS, extra_body={"guidance_scale": 1.0})


def test_unknown_or_missing_key_is_401(server):
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, "sk-nope").chat.completions.create(model="tiny", messages=MSGS)
    assert info.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": MSGS})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer sk-public"}).json()["data"][0]["id"] \
        == "tiny"
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_malformed_body_is_422(server):
    r = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": "Bearer sk-public"},
                   json={"messages": "hello"})
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
    with pytest.raises(openai.UnprocessableEntityError):
        client(server).chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])


def test_saturated_queue_answers_429_and_metrics_count_it(generator):
    app = create_app(generator, policies_from_dict(POLICIES, {"unleak"}), max_batch=1, max_queue=1)
    with live_server(app) as url:
        async def burst():
            c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-public", max_retries=0)
            calls = [c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12) for _ in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(burst())
        metrics = prometheus_samples(httpx.get(f"{url}/metrics").text)
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert limited and served and len(limited) + len(served) == 8
    # /metrics: every call counted where it ended, by policy
    assert metrics[("unleak_rejected_requests_total", (("policy", "public"), ("reason", "queue_full")))] \
        == len(limited)
    assert metrics[("unleak_requests_total", (("finish", "length"), ("policy", "public")))] == len(served)
    assert metrics[("unleak_completion_tokens_total", (("policy", "public"),))] == 12 * len(served)
    assert metrics[("unleak_prompt_tokens_total", (("policy", "public"),))] \
        == sum(r.usage.prompt_tokens for r in served)
    for name in ("unleak_request_latency_seconds_count", "unleak_time_to_first_token_seconds_count"):
        assert metrics[(name, (("policy", "public"),))] == len(served)
    assert metrics[("unleak_queued_requests", ())] == 0 and metrics[("unleak_running_requests", ())] == 0


def prometheus_samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_requests_arriving_together_decode_together(generator):
    app = create_app(generator, policies_from_dict(POLICIES, {"unleak"}), max_batch=8)
    with live_server(app) as url:
        async def burst():
            c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-public", max_retries=0)
            return await asyncio.gather(*[c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12)
                                          for _ in range(6)])

        answers = asyncio.run(burst())
        assert max(app.state.batcher.batch_sizes) > 1
    assert len({a.choices[0].message.content for a in answers}) == 1  # greedy: batching does not change output


LONG = {"policies": {"long": {"adapter": "unleak", "guidance_scale": 3.0, "max_tokens": 100_000}},
        "keys": {"sk-long": "long"}}


@pytest.fixture(scope="module")
def unbounded(tiny_model_dir, adapter_dir):
    """The server's generator with a context long enough for 100,000-token answers (RoPE needs no table)."""
    gen = build_server_generator(str(tiny_model_dir), {"unleak": str(adapter_dir)}, max_batch=8)
    gen.eos_ids, gen.context_length = set(), 10**6
    return gen


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_goes_away_stops_its_decoding(unbounded, caplog):
    """A stream closed after a few chunks, and a call that times out while queued behind it (one request per
    batch): the first stops decoding, the second is never decoded; both are counted "cancelled", long before
    their 100,000-token budgets, and the next request is served."""
    app = create_app(unbounded, policies_from_dict(LONG, {"unleak"}), max_batch=1)
    with live_server(app) as url, caplog.at_level(logging.INFO, logger="unleak.serve"):
        stream = client(url, "sk-long").chat.completions.create(model="tiny", messages=MSGS, stream=True,
                                                                 max_tokens=100_000)
        chunks = [next(stream) for _ in range(4)]
        assert chunks[-1].choices[0].delta.content
        with pytest.raises(openai.APITimeoutError):
            client(url, "sk-long", timeout=0.5).chat.completions.create(model="tiny", messages=MSGS,
                                                                         max_tokens=100_000)
        stream.close()
        assert wait_until(lambda: app.state.batcher.finished["cancelled"] == 2), app.state.batcher.finished
        served = client(url, "sk-long").chat.completions.create(model="tiny", messages=MSGS, max_tokens=5)
        assert served.usage.completion_tokens == 5 and served.choices[0].finish_reason == "length"
        assert httpx.get(f"{url}/health").json()["finished"] == {"cancelled": 2, "length": 1}
        metrics = prometheus_samples(httpx.get(f"{url}/metrics").text)
        assert metrics[("unleak_requests_total", (("finish", "cancelled"), ("policy", "long")))] == 2
        assert metrics[("unleak_time_to_first_token_seconds_count", (("policy", "long"),))] == 2  # not the queued
    gone = [r.getMessage() for r in caplog.records if "the client disconnected" in r.getMessage()]
    assert len(gone) == 2 and all("policy=long" in x for x in gone)


@pytest.mark.parametrize("continuous", [True, False])
def test_a_short_request_joins_a_running_batch(unbounded, continuous):
    """While a 100,000-token stream decodes, a 6-token request arrives: with continuous batching it joins the
    running batch and is answered, with the answer it gets alone, while the stream still runs; without, it
    waits for the batch to end (here: the stream's client leaving)."""
    app = create_app(unbounded, policies_from_dict(LONG, {"unleak"}), max_batch=4, continuous=continuous)
    with live_server(app) as url, concurrent.futures.ThreadPoolExecutor(1) as pool:
        stream = client(url, "sk-long").chat.completions.create(model="tiny", messages=MSGS, stream=True,
                                                                 max_tokens=100_000)
        next(stream), next(stream)
        short = pool.submit(client(url, "sk-long").chat.completions.create, model="tiny", max_tokens=6,
                            messages=[{"role": "user", "content": "And what about the weather today?"}])
        if continuous:
            answer = short.result(timeout=30)
            assert next(stream).choices[0].delta.content is not None  # the stream still runs
            assert app.state.batcher.joined == 1 and app.state.batcher.batch_sizes == [1]
        else:
            with pytest.raises(concurrent.futures.TimeoutError):
                short.result(timeout=2)
        stream.close()
        answer = short.result(timeout=30)
    alone = direct(unbounded, "unleak", 3.0, max_new=6,
                   messages=[{"role": "user", "content": "And what about the weather today?"}])
    assert answer.choices[0].message.content == alone and answer.usage.completion_tokens == 6


def test_shutdown_cancels_what_runs_and_stops_the_worker(unbounded):
    """The server stops while a 100,000-token stream decodes: after the graceful timeout the stream is
    cancelled, the batcher closes and its worker thread ends (none left decoding in the background)."""
    app = create_app(unbounded, policies_from_dict(LONG, {"unleak"}), max_batch=1)
    with live_server(app, graceful_timeout=0.5) as url:
        stream = client(url, "sk-long").chat.completions.create(model="tiny", messages=MSGS, stream=True,
                                                                 max_tokens=100_000)
        next(stream), next(stream)
    batcher = app.state.batcher
    assert batcher.closing and not batcher.alive and batcher.finished == {"cancelled": 1}
    stream.close()


def test_a_closed_batcher_answers_everything_and_refuses_more(unbounded):
    """`close` with one request decoding and one waiting (one per batch): both end "cancelled" long before
    their budgets, the worker ends, later submissions are refused."""
    batcher = Batcher(unbounded, max_batch=1)
    request = GenerationRequest(messages=MSGS, guidance=GuidanceConfig(3.0, "prob"),
                                sampling=SamplingConfig(max_new_tokens=100_000))

    async def run() -> list[tuple]:
        events = batcher.submit_all([request, request])
        first = await events.get()
        assert first[:2] == (0, "event")
        assert await asyncio.to_thread(batcher.close, 30)
        with pytest.raises(BatcherClosed):
            batcher.submit(request)
        items = [first]
        while sum(kind == "done" for _, kind, _ in items) < 2:
            items.append(await events.get())
        return items

    items = asyncio.run(run())
    done = {index: payload for index, kind, payload in items if kind == "done"}
    assert {i: r.finish_reason for i, r in done.items()} == {0: "cancelled", 1: "cancelled"}
    assert 0 < done[0].completion_tokens < 100_000 and done[1].completion_tokens == 0
    assert not batcher.alive and batcher.finished == {"cancelled": 2}


def test_logs_carry_no_content(server, caplog):
    secret = "my SSN is 078-05-1120"
    with caplog.at_level(logging.INFO, logger="unleak.serve"):
        client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": secret}])
    lines = [r.getMessage() for r in caplog.records if r.name == "unleak.serve"]
    assert lines and all("078-05" not in x and "policy=public" in x for x in lines)


def test_policy_file_is_validated():
    with pytest.raises(UnleakError, match=r"policies.public: unknown field 'adaptr'"):
        policies_from_dict({"policies": {"public": {"adaptr": "x"}}, "keys": {"k": "public"}})
    with pytest.raises(UnleakError, match=r"policies.public: adapter 'unleak' is not loaded"):
        policies_from_dict({"policies": {"public": {"adapter": "unleak"}}, "keys": {"k": "public"}})
    with pytest.raises(UnleakError, match="unknown policy 'nope'"):
        policies_from_dict({"policies": {"public": {}}, "keys": {"k": "nope"}})
    with pytest.raises(UnleakError, match="guidance_scale must be > 0"):
        policies_from_dict({"policies": {"public": {"guidance_scale": 0}}, "keys": {"k": "public"}})


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
bodies = st.fixed_dictionaries({}, optional={
    "messages": st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "x"]), "content": st.text(max_size=20)}),
        max_size=3)),
    "max_tokens": st.one_of(st.integers(-2, 4), json_values),
    "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), json_values),
    "top_p": st.one_of(st.floats(-1, 2, allow_nan=False), json_values),
    "stop": json_values, "stream": st.booleans(), "seed": st.one_of(st.integers(), json_values),
    "n": st.integers(0, 3), "guidance_scale": st.one_of(st.floats(-1, 60, allow_nan=False), json_values),
    "cfg_space": st.one_of(st.sampled_from(["log", "prob", "x"]), json_values),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_fuzzed_bodies_never_cause_server_errors(server, body):
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:
        body["max_tokens"] = 4
    r = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": "Bearer sk-internal"}, json=body,
                   timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert "error" in r.json()


def test_the_cli_server_stops_cleanly_on_sigterm(tiny_model_dir, tmp_path):
    """`unleak serve` in its own process answers; SIGTERM while a stream decodes: after the graceful timeout
    the stream is cancelled, the app's shutdown closes the batcher, and the process ends as one ended by
    SIGTERM does (uvicorn re-raises the signal once it has shut down), no worker left decoding to crash the
    interpreter's exit."""
    import os
    import signal
    import subprocess
    import sys

    from unleak.serve.background import free_port

    policies = tmp_path / "policies.yaml"
    policies.write_text("policies:\n  open: {adapter: null, max_tokens: 900}\nkeys:\n  sk-x: open\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "unleak", "serve", "--policies", str(policies), "--model",
                             str(tiny_model_dir), "--port", str(port), "--graceful-timeout", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                return False

        assert wait_until(up, timeout=120)
        answer = client(url, "sk-x").chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
        assert 1 <= answer.usage.completion_tokens <= 4
        stream = client(url, "sk-x").chat.completions.create(model="tiny", messages=MSGS, max_tokens=900,
                                                              stream=True)  # ~3 s of decoding here
        next(stream), next(stream)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err and "terminate called" not in err
    assert "batcher stopped; requests by finish: {'length': 1, 'cancelled': 1}" in err
