"""Batched decoding with classifier-free guidance: B requests as 2B rows, one forward per step.

`CFGGenerator(model, tokenizer).generate(requests)` decodes every request's
positive row (the dialog under the positive system prompt) and negative row
(the same dialog under the negative one) together: rows ``[pos..., neg...]``,
left-padded, one batched KV cache, position ids taken from the attention mask,
logits of the last position only. Each step the two rows of a pair are mixed
(`cfg.cfg_scores`), one token is chosen (`sampling.sample_next_token`) and
appended to both rows. A pair leaves the batch as soon as it stops (EOS, a
stop string or its token budget), so finished requests cost nothing, and new
requests can join a running batch between steps (`stream_encoded(admit=...)`:
prefilled on their own, their KV-cache rows appended; a server's continuous
batching). Requests with guidance scale 1 have no negative row at all. Rows
that are identical so far (one prompt under several guidance settings, or
sampled n times) run as one physical row, prefill and decode steps alike,
until their tokens differ; then the row's KV cache is copied. Comparing settings thus costs only the
steps where they disagree. Prompts that start alike (one conversation's
attack contexts, a shared system prompt) prefill the common part once
(`share_prefixes`, planned by `unleak.decoding.prefix`): the demo's attack
and test prompts run 1.7-1.9x faster that way, with the same tokens.

Per request: guidance scale and space, sampling settings and seed, stop
strings, and, on a `peft.PeftModel`, the adapter (on, off, or a named one;
a batch mixing them uses PEFT's per-row `adapter_names`), and the negative
row's own (by default the same: the method's one model under two prompts;
off: guidance away from the undefended model, `NEGATIVE_BRANCHES`). A request
whose `cancel` event is set leaves the batch at the next step (finish reason
"cancelled"): the server sets it when a client goes away. A request with
`top_logprobs` set gets each token's log-probability under the distribution
it was drawn from (the guided mix, normalised, before temperature and
top-k / top-p), and the `top_logprobs` most likely tokens of it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unleak.chat import (Message, messages_from_prompt, render_prompt, system_header_ids, validate_messages,
                         with_system_prompt)
from unleak.config import GuidanceConfig, PromptConfig, SamplingConfig
from unleak.decoding.cfg import cfg_scores
from unleak.decoding.cpu_linear import skinny_cpu_linear
from unleak.decoding.prefix import plan_prefill
from unleak.decoding.sampling import ban_repeated_ngrams, sample_next_token
from unleak.errors import UnleakError
from unleak.models import output_cache

log = logging.getLogger(__name__)

#: Adapter choice of a request: True = the model's active adapter, False = none, str = that adapter.
AdapterChoice = bool | str
#: What the guided negative rows run on: "adapter" (the method: the defended model under the negative
#: prompt) or "base" (the model without the adapter under it: guidance away from the undefended model)
NEGATIVE_BRANCHES = ("adapter", "base")


def negative_adapter_for(negative: str, adapter: Any, where: str = "negative") -> AdapterChoice | None:
    """`CFGGenerator(negative_adapter=...)` for a negative branch name, checked against the adapter given."""
    if negative not in NEGATIVE_BRANCHES:
        raise UnleakError(f"{where}: negative must be one of {', '.join(NEGATIVE_BRANCHES)}, got {negative!r}")
    if negative == "base" and adapter is None:
        raise UnleakError(f"{where}: negative 'base' needs an adapter (the base is the model without it)")
    return False if negative == "base" else None


@dataclass
class GenerationRequest:
    """One request. Give exactly one of `messages`, `prompt`, `text` or `input_ids`.

    - `messages`: a chat; the positive/negative system prompts replace any
      system message; a final assistant message is continued.
    - `prompt`: a plain user message or a full chat-formatted string.
    - `text`: raw text continued as it is (no chat template), behind a chat
      holding only the positive (negative) system prompt: what a served model
      makes of the extraction attack's text; too long, it loses its oldest
      tokens, never the system prompt.
    - `input_ids` (+ `negative_input_ids` when guided): raw token ids, no
      template applied (e.g. the extraction attack's plain-text prompts).
    """

    messages: list[Message] | None = None
    prompt: str | None = None
    text: str | None = None
    input_ids: list[int] | None = None
    negative_input_ids: list[int] | None = None
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    adapter: AdapterChoice = True
    #: the adapter of the guided negative row; None: the generator's `negative_adapter`, else `adapter`
    negative_adapter: AdapterChoice | None = None
    #: set it (from any thread) to stop decoding this request: it finishes at the next step, "cancelled"
    cancel: threading.Event | None = None
    #: None: no log-probabilities; k >= 0: each token's, and the k most likely tokens' (see `TokenLogprob`)
    top_logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the distribution it was drawn from: the guided mix
    (`cfg.cfg_scores`) normalised, n-gram bans applied, before temperature and top-k / top-p."""

    token_id: int
    logprob: float
    #: the most likely tokens of that distribution, (token id, log-probability), best first
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationResult:
    """The outcome of one request."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string), "length" or "cancelled" (its `cancel` event set)
    guidance_scale: float
    cfg_space: str
    prompt_tokens: int
    #: one per token of `token_ids` when the request asked for `top_logprobs`
    logprobs: list[TokenLogprob] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "guidance_scale": self.guidance_scale,
            "cfg_space": self.cfg_space,
        }


@dataclass
class StreamEvent:
    """Emitted while decoding: new text of request `index`; `result` set when it finished."""

    index: int
    text: str
    result: GenerationResult | None = None
    #: the tokens' log-probabilities since the request's previous event (when it asked for them)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EncodedRequest:
    """A request's token ids under the positive and (guided) negative system prompt (`CFGGenerator.encode`)."""

    pos: list[int]
    neg: list[int] | None
    request: GenerationRequest


@dataclass
class _Pair:
    """Decoding state of one request inside a batch."""

    index: int
    enc: EncodedRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of text already streamed
    done: GenerationResult | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs_emitted: int = 0


class CFGGenerator:
    """Batched CFG decoder over a Hugging Face causal LM (optionally a `peft.PeftModel`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompts: PromptConfig | None = None,
        max_batch_requests: int = 16,
        context_length: int | None = None,
        negative_adapter: AdapterChoice | None = None,
        share_prefixes: bool = True,
    ) -> None:
        self.model = model
        #: prefill a batch's prompts that start alike from one another's cache (`unleak.decoding.prefix`)
        self.share_prefixes = share_prefixes
        #: the adapter of the negative rows of requests that name none: None = the request's own (the
        #: method: one model, two prompts); False = none, i.e. the undefended model under the negative prompt
        self.negative_adapter = negative_adapter
        self.tokenizer = tokenizer
        self.prompts = prompts or PromptConfig()
        self.max_batch_requests = max_batch_requests
        cfg = model.config
        self.context_length = context_length or getattr(cfg, "max_position_embeddings", None) or 2048
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {e for e in eos if e is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        # a sliding-window layer's cache drops the oldest columns, which a guest's mask still counts on:
        # such models prefill every prompt whole
        self._sliding_window = bool(getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
                                    or any("sliding" in str(t) for t in getattr(cfg, "layer_types", None) or ()))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- encoding -------------------------------------------------------------

    def encode(self, request: GenerationRequest) -> EncodedRequest:
        """Token ids of the positive and (if guided) negative prompt of a request."""
        guided = request.guidance.guidance_scale != 1.0
        given = sum(x is not None for x in (request.messages, request.prompt, request.text, request.input_ids))
        if given != 1:
            raise UnleakError("a request needs exactly one of messages, prompt, text or input_ids")
        if request.text is not None:
            if not request.text:
                raise UnleakError("empty prompt")
            ids = self.tokenizer(request.text, add_special_tokens=False)["input_ids"]
            rows = []
            for system in (self.prompts.positive, self.prompts.negative)[:1 + guided]:
                head = system_header_ids(self.tokenizer, system)
                rows.append(self._fit(head + ids, len(head), request))
            return EncodedRequest(rows[0], rows[1] if guided else None, request)
        if request.input_ids is not None:
            if not request.input_ids:
                raise UnleakError("empty prompt")
            if guided and not request.negative_input_ids:
                raise UnleakError("a guided request with input_ids needs negative_input_ids")
            pos, neg = list(request.input_ids), list(request.negative_input_ids or []) or None
            return EncodedRequest(self._fit(pos, 0, request), self._fit(neg, 0, request) if guided else None, request)
        if request.messages is not None:
            messages = validate_messages(request.messages)
            continue_final = messages[-1]["role"] == "assistant"
        else:
            parsed = messages_from_prompt(request.prompt or "")
            messages, continue_final = parsed.messages, parsed.continue_final
        pos, keep_pos = self._encode_messages(with_system_prompt(messages, self.prompts.positive), continue_final)
        pos = self._fit(pos, keep_pos, request)
        neg = None
        if guided:
            neg_ids, keep_neg = self._encode_messages(
                with_system_prompt(messages, self.prompts.negative), continue_final
            )
            neg = self._fit(neg_ids, keep_neg, request)
        return EncodedRequest(pos, neg, request)

    def _encode_messages(self, messages: list[Message], continue_final: bool) -> tuple[list[int], int]:
        text = render_prompt(self.tokenizer, messages, continue_final)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        system_text = render_prompt(self.tokenizer, messages[:1], continue_final=True)
        system_ids = self.tokenizer(system_text, add_special_tokens=False)["input_ids"]
        keep = len(system_ids) if ids[: len(system_ids)] == system_ids else 0
        return ids, keep

    def _fit(self, ids: list[int], keep_head: int, request: GenerationRequest) -> list[int]:
        """Truncate from the left to fit the context, keeping the first `keep_head` (system) tokens."""
        budget = self.context_length - request.sampling.max_new_tokens
        if len(ids) <= budget:
            return ids
        if budget <= keep_head:
            raise UnleakError(
                f"max_new_tokens={request.sampling.max_new_tokens} leaves no room for the prompt "
                f"in a context of {self.context_length} tokens"
            )
        log.warning("prompt of %d tokens truncated from the left to %d (context %d)",
                    len(ids), budget, self.context_length)
        return ids[:keep_head] + ids[len(ids) - (budget - keep_head):]

    # --- decoding -------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Decode all requests (in batches of `max_batch_requests`); results in input order."""
        return [group[0] for group in self.generate_grouped([[r] for r in requests])]

    def generate_grouped(self, groups: Sequence[Sequence[GenerationRequest]],
                         on_batch: Callable[[int], None] | None = None) -> list[list[GenerationResult]]:
        """Decode groups of requests that share a prompt (e.g. one prompt under several guidance settings).

        A group is never split across batches, so its prompt is prefilled once;
        a batch holds `max_batch_requests` groups. Results in input order, grouped.
        `on_batch(n)` is called after each batch with its number of groups (progress).
        """
        encoded = [[self.encode(r) for r in group] for group in groups]
        results: list[GenerationResult | None] = [None] * sum(len(g) for g in encoded)
        start = 0
        for first in range(0, len(encoded), self.max_batch_requests):
            chunk = [e for group in encoded[first:first + self.max_batch_requests] for e in group]
            for event in self._decode_batch(chunk, offset=start):
                if event.result is not None:
                    results[event.index] = event.result
            start += len(chunk)
            if on_batch is not None:
                on_batch(len(encoded[first:first + self.max_batch_requests]))
        out, k = [], 0
        for group in encoded:
            out.append([r for r in results[k:k + len(group)] if r is not None])
            k += len(group)
        return out

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[StreamEvent]:
        """Decode, yielding text deltas as they come; a final event per request carries its result."""
        return self.stream_encoded([self.encode(r) for r in requests])

    def stream_encoded(self, encoded: Sequence[EncodedRequest],
                       admit: Callable[[int], Sequence[EncodedRequest]] | None = None) -> Iterator[StreamEvent]:
        """`stream` for requests already passed through `encode` (e.g. validated one by one by a server).

        `admit(running)`, if given, is asked between decode steps (with the number of requests still
        decoding) for more encoded requests; those join the running batch (continuous batching: a server's
        new request need not wait for the batch to end) and get the next indices. With `admit`, `encoded`
        must fit one batch (`max_batch_requests`). Models whose cache cannot be joined (sliding-window
        attention) never call it.
        """
        if admit is not None:
            if len(encoded) > self.max_batch_requests:
                raise ValueError(f"admit needs one batch: {len(encoded)} requests > {self.max_batch_requests}")
            yield from self._decode_batch(list(encoded), offset=0, admit=admit)
            return
        for start in range(0, len(encoded), self.max_batch_requests):
            chunk = list(encoded[start:start + self.max_batch_requests])
            yield from self._decode_batch(chunk, offset=start)

    def _new_pairs(self, encoded: list[EncodedRequest], offset: int) -> list[_Pair]:
        """Decoding states of `encoded` (indices from `offset`), each sampled request with its seeded RNG."""
        pairs = []
        for i, enc in enumerate(encoded):
            seed = enc.request.sampling.seed
            gen = None
            if enc.request.sampling.temperature > 0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            pairs.append(_Pair(offset + i, enc, gen))
        return pairs

    def _physical_rows(self, pairs: list[_Pair]) -> tuple[list[list[int]], list[AdapterChoice], list[int]]:
        """The distinct rows of `pairs`: their token ids and adapters, and for each logical row (the positive
        rows of all pairs, then the negative rows of the guided ones) its physical row.

        Identical rows (same ids and adapter: one prompt under several guidance settings, the positive and
        negative row of equal prompts, n samples of one prompt) are one physical row."""
        neg_owner = [k for k, p in enumerate(pairs) if p.enc.neg is not None]
        rows_ids = [p.enc.pos for p in pairs] + [pairs[k].enc.neg for k in neg_owner]
        row_adapters = [p.enc.request.adapter for p in pairs] + [self._negative_row_adapter(pairs[k].enc.request)
                                                                  for k in neg_owner]
        first_of: dict[tuple[tuple[int, ...], AdapterChoice], int] = {}
        unique: list[int] = []  # the first row of each distinct (ids, adapter)
        expand: list[int] = []  # row -> its index in `unique`
        for r, key in enumerate(zip(map(tuple, rows_ids), row_adapters)):
            if key not in first_of:
                first_of[key] = len(unique)
                unique.append(r)
            expand.append(first_of[key])
        return [rows_ids[r] for r in unique], [row_adapters[r] for r in unique], expand

    def _decode_batch(self, encoded: list[EncodedRequest], offset: int,
                      admit: Callable[[int], Sequence[EncodedRequest]] | None = None) -> Iterator[StreamEvent]:
        if not encoded:
            return
        device = self.device
        pairs = self._new_pairs(encoded, offset)
        active = list(range(len(pairs)))  # indices into `pairs` of unfinished pairs, row order
        neg_active = [k for k, p in enumerate(pairs) if p.enc.neg is not None]  # owners of the negative rows
        # the cache holds physical rows only: one per distinct (prompt, adapter, tokens so far). Rows that
        # agree so far (one prompt under several guidance settings while their choices coincide, the
        # positive rows of settings that all chose the same tokens) run once; a row is copied when its
        # token first differs from its twin's. `phys_of` maps each logical row to its physical row.
        phys_rows, phys_adapters, phys_of = self._physical_rows(pairs)
        with torch.inference_mode(), skinny_cpu_linear(self.model):
            cache, last_logits, step_mask, step_positions = self._prefill(phys_rows, phys_adapters)
            if self._sliding_window or not joinable(cache):
                admit = None
            while True:
                logits = last_logits[torch.tensor(phys_of, device=device)]
                tokens, logprobs = self._choose(logits, [pairs[k] for k in active], neg_active, active)
                finished_events: list[StreamEvent] = []
                for k, token, logprob in zip(active, tokens.tolist(), logprobs):
                    event = self._advance(pairs[k], token, logprob)
                    if event is not None:
                        finished_events.append(event)
                yield from finished_events

                still = [k for k in active if pairs[k].done is None]
                still_neg = [k for k in neg_active if pairs[k].done is None]
                if not still:
                    break
                # the chosen token goes to both rows of its pair; (physical row, token) is the next physical row
                token_of = dict(zip(active, tokens.tolist()))
                old_rows = [active.index(k) for k in still] + [len(active) + neg_active.index(k) for k in still_neg]
                first_of_next: dict[tuple[int, int], int] = {}
                select: list[int] = []  # physical row each next physical row continues
                next_inputs: list[int] = []
                next_phys_of: list[int] = []
                for r, k in zip(old_rows, still + still_neg):
                    key = (phys_of[r], token_of[k])
                    if key not in first_of_next:
                        first_of_next[key] = len(select)
                        select.append(key[0])
                        next_inputs.append(key[1])
                    next_phys_of.append(first_of_next[key])
                if select != list(range(step_mask.shape[0])):
                    keep = torch.tensor(select, device=device)
                    cache.batch_select_indices(keep)
                    step_mask, step_positions = step_mask[keep], step_positions[keep]
                phys_adapters = [phys_adapters[i] for i in select]
                phys_of, active, neg_active = next_phys_of, still, still_neg
                step_inputs = torch.tensor(next_inputs, dtype=torch.long, device=device).reshape(-1, 1)
                step_positions = step_positions[:, -1:] + 1
                step_mask = torch.cat([step_mask, torch.ones((step_mask.shape[0], 1), dtype=step_mask.dtype,
                                                             device=device)], dim=1)
                out = self._forward(step_inputs, step_mask, step_positions, cache, phys_adapters)
                cache, last_logits = output_cache(out), out.logits[:, -1, :]
                if admit is None or not (joining := list(admit(len(active)))):
                    continue
                # new requests join: prefilled on their own, their cache rows appended (left-padded to a common
                # length), their logical rows placed after the running pairs' positive and negative rows
                fresh = self._new_pairs(joining, offset + len(pairs))
                rows, adapters, fresh_of = self._physical_rows(fresh)
                new_cache, new_logits, new_mask, new_positions = self._prefill(rows, adapters)
                step_mask = join_caches(cache, step_mask, new_cache, new_mask)
                last_logits = torch.cat([last_logits, new_logits])
                step_positions = torch.cat([step_positions[:, -1:], new_positions[:, -1:]])
                fresh_of = [len(phys_adapters) + r for r in fresh_of]
                phys_of = (phys_of[:len(active)] + fresh_of[:len(fresh)] + phys_of[len(active):]
                           + fresh_of[len(fresh):])
                phys_adapters = phys_adapters + adapters
                active = active + [len(pairs) + i for i in range(len(fresh))]
                neg_active = neg_active + [len(pairs) + i for i, p in enumerate(fresh) if p.enc.neg is not None]
                pairs += fresh

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 adapters: list[AdapterChoice]) -> Any:
        """One forward of the physical rows (their adapters attached), logits of the last position only."""
        with self._adapter_scope(adapters) as extra:
            return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                              use_cache=True, logits_to_keep=1, **extra)

    def _prefill(self, rows: list[list[int]], adapters: list[AdapterChoice]
                 ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefill the physical rows: their cache, last logits, attention mask and position ids.

        With `share_prefixes` (and no sliding-window attention), in two forwards where
        `prefix.plan_prefill` finds that cheaper: the hosts whole, then every row on its host's cache
        (a host: padding only), each guest's own tokens after the part it shares; the guests' masks
        hide the rest of their host's tokens.
        """
        from transformers import DynamicCache

        device = self.device
        plan = plan_prefill(rows, adapters) if self.share_prefixes and not self._sliding_window else None
        hosts = plan.hosts if plan is not None else tuple(range(len(rows)))
        ids, mask = _left_padded([rows[h] for h in hosts], self.pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        out = self._forward(ids, mask, positions, cache, [adapters[h] for h in hosts])
        cache, logits = output_cache(out), out.logits[:, -1, :]
        if plan is None or not plan.guests:
            return cache, logits, mask, positions
        cache.batch_select_indices(torch.tensor(plan.host_of, device=device))
        width = mask.shape[1]
        kept = torch.zeros((len(rows), width), dtype=mask.dtype, device=device)
        for r, (h, n) in enumerate(zip(plan.host_of, plan.shared)):
            start = width - len(rows[hosts[h]])
            kept[r, start:start + n] = 1
        ids, own = _left_padded([row[n:] for row, n in zip(rows, plan.shared)], self.pad_id, device)
        positions = torch.tensor(plan.shared, device=device).unsqueeze(1) + own.cumsum(-1) - 1
        mask = torch.cat([kept, own], dim=1)
        out = self._forward(ids, mask, positions, cache, adapters)
        guests = torch.tensor(plan.guests, device=device)
        logits = logits[torch.tensor(plan.host_of, device=device)]
        logits[guests] = out.logits[guests, -1, :]
        return output_cache(out), logits, mask, positions

    def _choose(self, logits: torch.Tensor, active_pairs: list[_Pair], neg_active: list[int],
                active: list[int]) -> tuple[torch.Tensor, list[TokenLogprob | None]]:
        """Next token of every active pair (row order of `active`), and its log-probability where asked."""
        n = len(active_pairs)
        pos_logits = logits[:n]
        scores = torch.log_softmax(pos_logits.float(), dim=-1)
        if neg_active:
            idx = [active.index(k) for k in neg_active]
            g = torch.tensor([active_pairs[i].enc.request.guidance.guidance_scale for i in idx])
            prob = torch.tensor([active_pairs[i].enc.request.guidance.cfg_space == "prob" for i in idx])
            guided = cfg_scores(pos_logits[idx], logits[n:], g, prob)
            scores[idx] = guided
        sampling = [p.enc.request.sampling for p in active_pairs]
        if any(s.no_repeat_ngram_size for s in sampling):
            scores = ban_repeated_ngrams(scores, [p.tokens for p in active_pairs],
                                         [s.no_repeat_ngram_size for s in sampling])
        tokens = sample_next_token(
            scores,
            temperature=torch.tensor([s.temperature for s in sampling]),
            top_k=torch.tensor([s.top_k for s in sampling]),
            top_p=torch.tensor([s.top_p for s in sampling]),
            generators=[p.generator for p in active_pairs],
        )
        return tokens, token_logprobs(scores, tokens, [p.enc.request.top_logprobs for p in active_pairs])

    def _advance(self, pair: _Pair, token: int, logprob: TokenLogprob | None = None) -> StreamEvent | None:
        """Append `token` to a pair; return an event with new text (and the result if it finished)."""
        req = pair.enc.request
        finish = None
        if req.cancel is not None and req.cancel.is_set():
            finish = "cancelled"
        elif token in self.eos_ids:
            finish = "stop"
        else:
            pair.tokens.append(token)
            if logprob is not None:
                pair.logprobs.append(logprob)
        text = self.tokenizer.decode(pair.tokens, skip_special_tokens=True)
        stops = req.sampling.stop
        if stops and finish != "cancelled":
            hits = [text.find(s, max(0, pair.emitted - len(s))) for s in stops]
            hits = [h for h in hits if h >= 0]
            if hits:
                text, finish = text[: min(hits)], "stop"
        if finish is None and len(pair.tokens) >= req.sampling.max_new_tokens:
            finish = "length"
        if finish is None:
            # hold back an unfinished UTF-8 sequence and what could start a stop string
            hold = max((len(s) - 1 for s in stops), default=0)
            safe = text.rstrip("\ufffd")
            safe = safe[: max(pair.emitted, len(safe) - hold)]
            delta, pair.emitted = safe[pair.emitted:], max(pair.emitted, len(safe))
            return StreamEvent(pair.index, delta, logprobs=self._new_logprobs(pair)) if delta else None
        pair.done = GenerationResult(
            text=text,
            token_ids=list(pair.tokens),
            finish_reason=finish,
            guidance_scale=req.guidance.guidance_scale,
            cfg_space=req.guidance.cfg_space,
            prompt_tokens=len(pair.enc.pos),
            logprobs=list(pair.logprobs) if req.top_logprobs is not None else None,
        )
        delta = text[pair.emitted:]
        pair.emitted = len(text)
        return StreamEvent(pair.index, delta, pair.done, logprobs=self._new_logprobs(pair))

    @staticmethod
    def _new_logprobs(pair: _Pair) -> list[TokenLogprob] | None:
        """The pair's token log-probabilities not yet in an event (None when it did not ask for them)."""
        if pair.enc.request.top_logprobs is None:
            return None
        new, pair.logprobs_emitted = pair.logprobs[pair.logprobs_emitted:], len(pair.logprobs)
        return new

    def _negative_row_adapter(self, request: GenerationRequest) -> AdapterChoice:
        for choice in (request.negative_adapter, self.negative_adapter):
            if choice is not None:
                return choice
        return request.adapter

    @contextlib.contextmanager
    def _adapter_scope(self, choices: list[AdapterChoice]) -> Iterator[dict[str, Any]]:
        """Attach the adapters of one forward pass's rows (`choices`, row order); yields extra forward kwargs."""
        if not self.is_peft:
            if any(isinstance(c, str) for c in choices):
                raise UnleakError("a named adapter was requested but the model has no adapters loaded")
            yield {}
            return
        active_name = self.model.active_adapter
        names = ["__base__" if c is False else (active_name if c is True else c) for c in choices]
        unknown = {n for n in names if n != "__base__" and n not in self.model.peft_config}
        if unknown:
            raise UnleakError(f"unknown adapter(s) {sorted(unknown)}; loaded: {sorted(self.model.peft_config)}")
        if len(set(names)) > 1:
            yield {"adapter_names": names}
        elif names[0] == "__base__":
            with self.model.disable_adapter():
                yield {}
        elif names[0] != active_name:
            self.model.set_adapter(names[0])
            try:
                yield {}
            finally:
                self.model.set_adapter(active_name)
        else:
            yield {}


def token_logprobs(scores: torch.Tensor, tokens: torch.Tensor, top: Sequence[int | None]
                   ) -> list[TokenLogprob | None]:
    """Per row of `scores` [B, V] (unnormalised log-scores) with `top[b]` not None: the chosen token's
    log-probability under the normalised distribution, and its `top[b]` most likely tokens."""
    out: list[TokenLogprob | None] = [None] * len(top)
    rows = [b for b, k in enumerate(top) if k is not None]
    if not rows:
        return out
    logp = torch.log_softmax(scores[rows].float(), dim=-1)
    k_max = max(top[b] for b in rows)  # type: ignore[type-var]
    best_lp, best_id = logp.topk(k_max, dim=-1) if k_max else (logp[:, :0], logp[:, :0].long())
    chosen = tokens[rows].reshape(-1, 1).to(logp.device)
    chosen_lp = logp.gather(1, chosen).squeeze(1)
    for i, b in enumerate(rows):
        k = top[b]
        out[b] = TokenLogprob(int(chosen[i]), float(chosen_lp[i]),
                              tuple(zip(best_id[i, :k].tolist(), best_lp[i, :k].tolist())))
    return out


def joinable(cache: Any) -> bool:
    """Whether `join_caches` can append rows to `cache`: every layer a plain `DynamicLayer` (a sliding-window
    layer drops columns, so rows of other lengths do not line up)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def join_caches(cache: Any, mask: torch.Tensor, other: Any, other_mask: torch.Tensor) -> torch.Tensor:
    """Append the rows of KV cache `other` to `cache` (in place), the shorter left-padded with zero keys and
    values along the sequence; returns the joined attention mask (the padding masked out)."""
    width = max(mask.shape[1], other_mask.shape[1])

    def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer, extra in zip(cache.layers, other.layers, strict=True):
        layer.keys = torch.cat([left_pad(layer.keys, -2), left_pad(extra.keys, -2)])
        layer.values = torch.cat([left_pad(layer.values, -2), left_pad(extra.values, -2)])
    return torch.cat([left_pad(mask, 1), left_pad(other_mask, 1)])


def _left_padded(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids left-padded to the longest row, and the attention mask (an empty row is all padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)
