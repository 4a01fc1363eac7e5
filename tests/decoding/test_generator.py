"""The batched CFG generator on the tiny random model (and the default model, marked slow)."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
import torch

from unleak.chat import render_prompt, with_system_prompt
from unleak.config import GuidanceConfig, PromptConfig, SamplingConfig
from unleak.decoding import CFGGenerator, GenerationRequest
from unleak.decoding.cfg import cfg_mix_probs
from unleak.errors import UnleakError
from unleak.models import load_model, load_tokenizer
from tests.conftest import random_lora

PROMPTS = PromptConfig()
DIALOGS = [
    [{"role": "user", "content": "Hi, I am Maria Lopez from Seville. Can you draft an email to my landlord?"}],
    [{"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "My phone is 555-0101."},
     {"role": "assistant", "content": "Thanks! I will remember that your number is"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return model, tokenizer


def request(messages, g=3.0, space="log", n=12, **sampling):
    return GenerationRequest(messages=messages, guidance=GuidanceConfig(g, space),
                             sampling=SamplingConfig(max_new_tokens=n, **sampling))


def encode(tokenizer, messages, system):
    cont = messages[-1]["role"] == "assistant"
    text = render_prompt(tokenizer, with_system_prompt(messages, system), continue_final=cont)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")


def hf_guided(model, tokenizer, messages, g, n):
    pos, neg = encode(tokenizer, messages, PROMPTS.positive), encode(tokenizer, messages, PROMPTS.negative)
    out = model.generate(**pos, guidance_scale=g, negative_prompt_ids=neg["input_ids"],
                         negative_prompt_attention_mask=neg["attention_mask"], max_new_tokens=n,
                         min_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, pos["input_ids"].shape[1]:].tolist()


def reference_prob_space(model, tokenizer, messages, g, n):
    """Direct computation, no cache, no batching: full forward of each branch every step."""
    pos = encode(tokenizer, messages, PROMPTS.positive)["input_ids"]
    neg = encode(tokenizer, messages, PROMPTS.negative)["input_ids"]
    tokens = []
    with torch.no_grad():
        for _ in range(n):
            lp, ln = model(pos).logits[:, -1], model(neg).logits[:, -1]
            t = cfg_mix_probs(lp, ln, g).argmax(-1, keepdim=True)
            tokens.append(t.item())
            pos, neg = torch.cat([pos, t], 1), torch.cat([neg, t], 1)
    return tokens


def no_eos(gen):
    gen.eos_ids = set()  # a random model may emit EOS at any step; compare fixed lengths
    return gen


@pytest.mark.parametrize("messages", DIALOGS)
def test_log_space_greedy_equals_transformers_guidance_scale(tiny, messages):
    model, tokenizer = tiny
    ours = no_eos(CFGGenerator(model, tokenizer)).generate([request(messages, 3.0, "log", 12)])[0]
    assert ours.token_ids == hf_guided(model, tokenizer, messages, 3.0, 12)


@pytest.mark.parametrize("messages", DIALOGS)
def test_prob_space_greedy_equals_direct_reference(tiny, messages):
    model, tokenizer = tiny
    ours = no_eos(CFGGenerator(model, tokenizer)).generate([request(messages, 3.0, "prob", 10)])[0]
    assert ours.token_ids == reference_prob_space(model, tokenizer, messages, 3.0, 10)
    assert ours.cfg_space == "prob" and ours.guidance_scale == 3.0


def test_batched_equals_one_by_one_with_mixed_settings(tiny):
    """Left padding, mask-derived positions and per-request scale/space/length are independent."""
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    reqs = [request(DIALOGS[0], 3.0, "log", 9), request(DIALOGS[1], 1.0, "log", 4),
            request(DIALOGS[2], 2.0, "prob", 12), request(DIALOGS[1], 5.0, "prob", 7)]
    together = gen.generate(reqs)
    alone = [gen.generate([r])[0] for r in reqs]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [len(r.token_ids) for r in together] == [9, 4, 12, 7]
    assert all(r.finish_reason == "length" for r in together)


def rows_per_forward(model):
    sizes = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: sizes.append(o.shape[0]))
    return sizes, handle


def test_one_forward_per_step_and_finished_pairs_leave(tiny):
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer, share_prefixes=False))
    sizes, handle = rows_per_forward(model)
    try:
        gen.generate([request(DIALOGS[0], 3.0, "log", 2), request(DIALOGS[1], 3.0, "log", 5),
                      request(DIALOGS[2], 1.0, "log", 5)])
    finally:
        handle.remove()
    # 3 positive rows + 2 negative rows; the first pair leaves after 2 tokens; g = 1 has no negative row
    assert sizes == [5, 5, 3, 3, 3]


def test_identical_rows_run_once_while_they_agree_with_equal_results(tiny):
    """One prompt under several guidance settings: its positive and its negative row run through the prefill
    once, and each decode step once per distinct (prompt, tokens so far)."""
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer, share_prefixes=False))  # one prefill forward (see below)
    reqs = [request(DIALOGS[0], 1.0, "prob", 6), request(DIALOGS[0], 3.0, "log", 6),
            request(DIALOGS[0], 3.0, "prob", 6), request(DIALOGS[0], 5.0, "prob", 6),
            request(DIALOGS[1], 3.0, "log", 6)]
    alone = [gen.generate([r])[0].token_ids for r in reqs]
    sizes, handle = rows_per_forward(model)
    try:
        together = gen.generate(reqs)
    finally:
        handle.remove()
    assert [r.token_ids for r in together] == alone
    assert len({tuple(a) for a in alone[:4]}) > 1  # the settings do differ on this model
    # prefill: 2 distinct positive + 2 distinct negative rows; then, each step, one row per distinct
    # (prompt, tokens so far) among the 5 positive and the 4 negative rows: rows that agree run once
    prompts, guided = [0, 0, 0, 0, 1], [False, True, True, True, True]
    distinct = [len({(d, tuple(a[:t])) for d, a in zip(prompts, alone)})
                + len({(d, tuple(a[:t])) for d, a, g in zip(prompts, alone, guided) if g}) for t in range(1, 6)]
    assert sizes == [4] + distinct and max(distinct) < 9  # here the settings agree for a token or more
    sizes.clear()
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: sizes.append(o.shape[0]))
    try:  # requests that never disagree run as one pair of rows throughout
        twins = gen.generate([request(DIALOGS[0], 3.0, "log", 6)] * 3)
    finally:
        handle.remove()
    assert [r.token_ids for r in twins] == [alone[1]] * 3 and sizes == [2] * 6


def test_grouped_requests_stay_in_one_batch_and_report_progress(tiny):
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer, max_batch_requests=2, share_prefixes=False))
    groups = [[request(d, 1.0, "prob", 3), request(d, 3.0, "prob", 3)] for d in DIALOGS]
    sizes, handle = rows_per_forward(model)
    done: list[int] = []
    try:
        out = gen.generate_grouped(groups, on_batch=done.append)
    finally:
        handle.remove()
    assert done == [2, 1]  # groups per batch: 2 of the 3, then the last
    # batch 1: 2 prompts x (positive, negative) prefilled once; batch 2: 1 x 2. Then, each step, the negative
    # row of each prompt and one positive row per distinct (prompt, tokens so far)
    def steps(batch: list[int]) -> list[int]:
        return [len(batch) + len({(d, tuple(r.token_ids[:t])) for d in batch for r in out[d]}) for t in (1, 2)]
    assert sizes == [4, *steps([0, 1]), 2, *steps([2])]
    assert [[r.token_ids for r in g] for g in out] == [[gen.generate([r])[0].token_ids for r in g] for g in groups]


def test_no_repeat_ngram_size_bans_exactly_the_repeating_tokens(tiny):
    """n = 1: no token occurs twice; greedy output is unchanged up to where plain decoding first repeated one."""
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    plain = gen.generate([request(d, 1.0, n=60) for d in DIALOGS])
    fixed = gen.generate([request(d, 1.0, n=60, no_repeat_ngram_size=1) for d in DIALOGS])
    repeated = 0
    for p, f in zip(plain, fixed):
        assert len(f.token_ids) == 60 and len(set(f.token_ids)) == 60
        first = next((i for i, t in enumerate(p.token_ids) if t in p.token_ids[:i]), None)
        if first is not None:
            repeated += 1
            assert f.token_ids[:first] == p.token_ids[:first] and f.token_ids[first] != p.token_ids[first]
        else:
            assert f.token_ids == p.token_ids
    assert repeated  # the random model repeats a token within 60 greedy steps on some prompt
    with pytest.raises(UnleakError, match="no_repeat_ngram_size"):
        SamplingConfig(no_repeat_ngram_size=-1)


def test_scale_one_runs_no_negative_row(tiny):
    model, tokenizer = tiny
    sizes, handle = rows_per_forward(model)
    try:
        no_eos(CFGGenerator(model, tokenizer)).generate([request(DIALOGS[0], 1.0, "prob", 3)])
    finally:
        handle.remove()
    assert sizes == [1, 1, 1]


def test_eos_and_stop_strings_end_a_request(tiny):
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    full = gen.generate([request(DIALOGS[1], 3.0, "log", 16)])[0]
    gen.eos_ids = {full.token_ids[3]}
    cut = gen.generate([request(DIALOGS[1], 3.0, "log", 16)])[0]
    assert cut.finish_reason == "stop" and cut.token_ids == full.token_ids[:3]
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 3]
    assert stop.strip()
    gen.eos_ids = set()
    stopped = gen.generate([request(DIALOGS[1], 3.0, "log", 16, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop)]


def test_streamed_text_adds_up_to_the_result(tiny):
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    reqs = [request(DIALOGS[0], 3.0, "prob", 10), request(DIALOGS[1], 1.0, "log", 6)]
    pieces, results = {0: "", 1: ""}, {}
    for ev in gen.stream(reqs):
        pieces[ev.index] += ev.text
        if ev.result is not None:
            results[ev.index] = ev.result
    assert pieces[0] == results[0].text and pieces[1] == results[1].text


def test_a_cancelled_request_leaves_the_batch_and_the_others_run_on_unchanged(tiny):
    """Its `cancel` event set after its second text event, a request ends at the next step ("cancelled") with a
    prefix of its uncancelled tokens; the other request of the batch gives exactly its solo answer."""
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    full = gen.generate([request(DIALOGS[0], 3.0, "prob", 24)])[0]
    other = gen.generate([request(DIALOGS[1], 3.0, "log", 24)])[0]
    cancel = threading.Event()
    reqs = [dataclasses.replace(request(DIALOGS[0], 3.0, "prob", 24), cancel=cancel),
            request(DIALOGS[1], 3.0, "log", 24)]
    seen, results = 0, {}
    for ev in gen.stream(reqs):
        if ev.index == 0 and ev.text:
            seen += 1
            if seen == 2:
                cancel.set()
        if ev.result is not None:
            results[ev.index] = ev.result
    cut = results[0]
    assert cut.finish_reason == "cancelled"
    assert 2 <= len(cut.token_ids) < 24 and cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert results[1].token_ids == other.token_ids and results[1].finish_reason == "length"


@pytest.mark.parametrize("running, joining", [
    # the joiners' prompts shorter than the running cache (theirs left-padded) ...
    ([(0, 3.0, "prob", 30), (2, 1.0, "log", 10)], [(1, 3.0, "log", 6), (0, 2.0, "prob", 8)]),
    # ... and longer (the running cache left-padded)
    ([(1, 3.0, "log", 30)], [(0, 3.0, "prob", 8), (2, 1.0, "log", 5)]),
])
def test_requests_joining_a_running_batch_decode_as_if_alone(tiny, running, joining):
    """`admit` hands over requests after the third decode step, while the batch still runs: each request's
    tokens equal its solo greedy run, the joiners get the next indices and finish before the long request;
    `admit` is told how many requests are running."""
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer, max_batch_requests=4))
    first = [request(DIALOGS[d], g, space, n) for d, g, space, n in running]
    later = [request(DIALOGS[d], g, space, n) for d, g, space, n in joining]
    solo = [gen.generate([r])[0].token_ids for r in first + later]
    calls = []

    def admit(n_running):
        calls.append(n_running)
        return [gen.encode(r) for r in later] if len(calls) == 3 else []

    results, order = {}, []
    for ev in gen.stream_encoded([gen.encode(r) for r in first], admit=admit):
        if ev.result is not None:
            results[ev.index] = ev.result
            order.append(ev.index)
    assert [results[i].token_ids for i in range(len(solo))] == solo
    assert calls[:3] == [len(first)] * 3 and calls[3] == len(first) + len(later)
    assert order[-1] == 0  # the 30-token request ends last


def test_join_caches_left_pads_the_shorter_rows(tiny):
    """Joined caches: rows of 5 and 3 positions -> 5 columns, the 3-position row's keys after 2 zero columns,
    its mask 0 0 1 1 1; a sliding-window model's cache is not joinable."""
    from transformers import DynamicCache, MistralConfig

    from unleak.decoding.generator import join_caches, joinable

    model, _ = tiny
    a, b = DynamicCache(config=model.config), DynamicCache(config=model.config)
    heads, dim = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    for layer in range(model.config.num_hidden_layers):
        a.update(torch.randn(1, heads, 5, dim), torch.randn(1, heads, 5, dim), layer)
        b.update(torch.randn(1, heads, 3, dim), torch.randn(1, heads, 3, dim), layer)
    b_keys = b.layers[0].keys.clone()
    mask = join_caches(a, torch.ones(1, 5, dtype=torch.long), b, torch.ones(1, 3, dtype=torch.long))
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert a.layers[0].keys.shape == (2, heads, 5, dim)
    assert torch.equal(a.layers[0].keys[1, :, 2:], b_keys[0]) and not a.layers[0].keys[1, :, :2].any()
    assert joinable(a)
    sliding = MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            sliding_window=4)
    assert not joinable(DynamicCache(config=sliding))


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny):
    model, tokenizer = tiny
    gen = no_eos(CFGGenerator(model, tokenizer))
    r = request(DIALOGS[0], 3.0, "prob", 10, temperature=0.9, top_p=0.95, top_k=50, seed=123)
    a = gen.generate([r])[0].token_ids
    b = gen.generate([request(DIALOGS[1], 2.0, "log", 4, temperature=1.0, seed=5), r])[1].token_ids
    assert a == b


def test_adapter_per_request_on_a_peft_model(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    base = load_model(str(tiny_model_dir), device="cpu")
    torch.manual_seed(0)
    model = random_lora(base)
    model.eval()
    gen = no_eos(CFGGenerator(model, tokenizer))
    on = gen.generate([GenerationRequest(messages=DIALOGS[0], adapter=True,
                                         sampling=SamplingConfig(max_new_tokens=8))])[0]
    off = gen.generate([GenerationRequest(messages=DIALOGS[0], adapter=False,
                                          sampling=SamplingConfig(max_new_tokens=8))])[0]
    assert on.token_ids != off.token_ids
    mixed = gen.generate([GenerationRequest(messages=DIALOGS[0], adapter=a, sampling=SamplingConfig(max_new_tokens=8))
                          for a in (False, True)])
    assert [m.token_ids for m in mixed] == [off.token_ids, on.token_ids]
    with pytest.raises(UnleakError, match="unknown adapter"):
        gen.generate([GenerationRequest(messages=DIALOGS[0], adapter="nope")])


def test_negative_rows_without_the_adapter_contrast_with_the_undefended_model(tiny_model_dir):
    """`negative_adapter=False`: each step mixes the adapter under the positive prompt with the bare model
    under the negative one (direct reference: full forwards, no cache, no batching)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = random_lora(load_model(str(tiny_model_dir), device="cpu")).eval()
    messages, g, n = DIALOGS[0], 3.0, 8
    pos = encode(tokenizer, messages, PROMPTS.positive)["input_ids"]
    neg = encode(tokenizer, messages, PROMPTS.negative)["input_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(n):
            lp = model(pos).logits[:, -1]
            with model.disable_adapter():
                ln = model(neg).logits[:, -1]
            t = cfg_mix_probs(lp, ln, g).argmax(-1, keepdim=True)
            expected.append(t.item())
            pos, neg = torch.cat([pos, t], 1), torch.cat([neg, t], 1)
    contrast = no_eos(CFGGenerator(model, tokenizer, negative_adapter=False))
    got = contrast.generate([request(messages, g, "prob", n), request(DIALOGS[1], 1.0, "prob", n)])
    assert got[0].token_ids == expected
    same = no_eos(CFGGenerator(model, tokenizer)).generate([request(messages, g, "prob", n)])[0]
    assert same.token_ids != expected  # the method's negative row (the adapter on) decodes otherwise here
    unguided = no_eos(CFGGenerator(model, tokenizer)).generate([request(DIALOGS[1], 1.0, "prob", n)])[0]
    assert got[1].token_ids == unguided.token_ids  # no negative row, nothing changes
    per_request = dataclasses.replace(request(messages, g, "prob", n), negative_adapter=False)
    assert no_eos(CFGGenerator(model, tokenizer)).generate([per_request])[0].token_ids == expected


def test_long_prompt_is_truncated_from_the_left_keeping_the_system_message(tiny, caplog):
    model, tokenizer = tiny
    gen = CFGGenerator(model, tokenizer, context_length=96)
    long = [{"role": "user", "content": "tell me " * 200 + "END"}]
    with caplog.at_level(logging.WARNING):
        enc = gen.encode(request(long, 3.0, "log", 16))
    assert "truncated" in caplog.text
    assert len(enc.pos) == 80 and len(enc.neg) == 80
    system = tokenizer(render_prompt(tokenizer, [{"role": "system", "content": PROMPTS.positive}],
                                     continue_final=True), add_special_tokens=False)["input_ids"]
    assert enc.pos[: len(system)] == system
    full = encode(tokenizer, long, PROMPTS.positive)["input_ids"][0].tolist()
    assert enc.pos[len(system):] == full[-(80 - len(system)):]


def test_raw_text_runs_behind_each_system_header_and_keeps_it_when_cut(tiny):
    """`text`: each system prompt's chat header, then the text's own tokens (no template); a text too long for
    the context loses its oldest tokens, never the header."""
    from unleak.chat import system_header_ids

    model, tokenizer = tiny
    gen = CFGGenerator(model, tokenizer, context_length=96)
    heads = [system_header_ids(tokenizer, p) for p in (PROMPTS.positive, PROMPTS.negative)]
    short = gen.encode(GenerationRequest(text="the courier has my phone", guidance=GuidanceConfig(3.0, "prob"),
                                         sampling=SamplingConfig(max_new_tokens=16)))
    ids = tokenizer("the courier has my phone", add_special_tokens=False)["input_ids"]
    assert short.pos == heads[0] + ids and short.neg == heads[1] + ids
    long_text = "tell me " * 200 + "END"
    cut = gen.encode(GenerationRequest(text=long_text, sampling=SamplingConfig(max_new_tokens=16)))
    full = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(cut.pos) == len(cut.neg) == 80
    for row, head in zip((cut.pos, cut.neg), heads):
        assert row == head + full[-(80 - len(head)):]
    plain = gen.encode(GenerationRequest(text="hello", guidance=GuidanceConfig(1.0, "prob"),
                                         sampling=SamplingConfig(max_new_tokens=16)))
    assert plain.neg is None  # unguided: no negative row


@pytest.mark.parametrize("bad, match", [
    (GenerationRequest(prompt=""), "empty prompt"),
    (GenerationRequest(text=""), "empty prompt"),
    (GenerationRequest(text="x", prompt="y"), "exactly one"),
    (GenerationRequest(prompt="   "), "empty prompt"),
    (GenerationRequest(messages=[]), "non-empty list"),
    (GenerationRequest(messages=[{"role": "robot", "content": "x"}]), "role"),
    (GenerationRequest(), "exactly one"),
])
def test_bad_requests_are_clear_errors(tiny, bad, match):
    model, tokenizer = tiny
    with pytest.raises(UnleakError, match=match):
        CFGGenerator(model, tokenizer).generate([bad])


def test_chat_string_prompt_gets_its_system_message_swapped(tiny):
    model, tokenizer = tiny
    gen = CFGGenerator(model, tokenizer)
    llama = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023"
             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is two plus two?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    from_string = gen.encode(GenerationRequest(prompt=llama))
    from_messages = gen.encode(request(DIALOGS[1]))
    assert from_string.pos == from_messages.pos and from_string.neg == from_messages.neg
    assert PROMPTS.positive in tokenizer.decode(from_string.pos)
    assert PROMPTS.negative in tokenizer.decode(from_string.neg)
    assert "Cutting Knowledge" not in tokenizer.decode(from_string.pos)


@pytest.mark.slow
def test_default_model_log_space_equals_transformers_guidance_scale(default_model_dir):
    model = load_model(str(default_model_dir), device="cpu")
    tokenizer = load_tokenizer(str(default_model_dir))
    messages = [{"role": "user", "content": "I'm Tom Baker, born 3 May 1980 in Leeds. Write a one-line bio."}]
    ours = CFGGenerator(model, tokenizer).generate([request(messages, 3.0, "log", 24)])[0]
    assert ours.token_ids == hf_guided(model, tokenizer, messages, 3.0, 24)[: len(ours.token_ids)]


def test_prompts_that_start_alike_share_their_prefill_with_equal_results(tiny_model_dir):
    """Attack-like prompts (each a prefix of the next, or one token longer) on a PEFT model, positive rows with
    the adapter and guided negative rows without it: two prefill forwards (the hosts whole, then every row's
    own rest), the same tokens as one prefill of every row; rows share only with rows of the same adapter."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = random_lora(load_model(str(tiny_model_dir), device="cpu")).eval()
    text = tokenizer("Dear Maria Lopez, the courier will call 555-0101 before delivering to 12 Elm Street, "
                     "Seville, on Monday. Your order number is 48213 and the invoice goes to maria@example.com.",
                     add_special_tokens=False)["input_ids"]
    head = tokenizer("Attack: ", add_special_tokens=False)["input_ids"]
    cuts = [len(text) // 3, len(text) // 3 + 1, len(text) // 2, len(text)]
    reqs = [GenerationRequest(input_ids=text[:k], negative_input_ids=head + text[:k] if g != 1 else None,
                              guidance=GuidanceConfig(g, "prob"), sampling=SamplingConfig(max_new_tokens=6),
                              negative_adapter=False)
            for k in cuts for g in (1.0, 3.0)]
    reqs.append(request(DIALOGS[1], 1.0, "prob", 6))
    separate = no_eos(CFGGenerator(model, tokenizer, share_prefixes=False)).generate(reqs)
    shapes = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[:2])))
    try:
        shared = no_eos(CFGGenerator(model, tokenizer)).generate(reqs)
    finally:
        handle.remove()
    assert [r.token_ids for r in shared] == [r.token_ids for r in separate]
    # physical rows: 4 positive cuts (adapter on), the chat prompt, 4 negative cuts (adapter off). Hosts: the
    # longest cut of each adapter and the chat prompt; every other cut keeps all but its last token of them
    chat = len(CFGGenerator(model, tokenizer).encode(reqs[-1]).pos)
    assert shapes[0] == (3, max(len(text), len(head) + len(text), chat)) and shapes[1] == (9, 1)
    assert len(shapes) == 2 + 5  # then one forward per decode step


def test_sliding_window_model_prefills_prompts_longer_than_its_window_correctly(default_tokenizer):
    """A model whose layers attend to the last 8 tokens only: prompts that start alike and are longer than the
    window decode as a direct forward of the whole text does (no cache), with prefix sharing on and off (the
    generator prefills such a model's prompts whole: a guest's mask counts on cache columns the window drops)."""
    from transformers import MistralConfig, MistralForCausalLM

    tok = default_tokenizer
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8, max_position_embeddings=512, initializer_range=0.2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).eval()
    text = tok("The courier will call 555-0101 before delivering to 12 Elm Street, Seville, on Monday morning.",
               add_special_tokens=False)["input_ids"]
    prompts = [text[:k] for k in (12, 13, 20, len(text))]
    expected = []
    with torch.no_grad():
        for ids in prompts:
            ids, out = list(ids), []
            for _ in range(5):
                out.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
                ids.append(out[-1])
            expected.append(out)
    reqs = [GenerationRequest(input_ids=p, guidance=GuidanceConfig(1.0), sampling=SamplingConfig(max_new_tokens=5))
            for p in prompts]
    for share in (False, True):
        got = no_eos(CFGGenerator(model, tok, share_prefixes=share)).generate(reqs)
        assert [r.token_ids for r in got] == expected, share
