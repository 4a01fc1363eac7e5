"""Traffic-source policies: which API key gets which guidance, adapter and token budget.

A YAML file:

```yaml
policies:
  public:             {adapter: unleak, guidance_scale: 3.0, cfg_space: prob, max_tokens: 512}
  public-contrast:    {adapter: unleak, guidance_scale: 3.0, negative: base}
  public-filtered:    {adapter: unleak, guidance_scale: 3.0, redact_output: strict}
  internal-analytics: {adapter: null, guidance_scale: 1.0, allow_override: true, max_top_logprobs: 5}
keys:                 # API key -> policy (plain keys: fine for tests, prefer hashes)
  sk-public-demo: public
key_hashes:           # sha256 hex of the key -> policy
  9f86d08...: internal-analytics
```

`load_policies(path, adapters)` validates every entry at start (unknown
fields, bad values, a policy naming an adapter that is not loaded, a key
pointing at a missing policy) with an error naming the entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unleak.config import PII_PROFILES, GuidanceConfig, config_from_dict
from unleak.errors import UnleakError

#: the most alternatives per token a request may ask for (OpenAI's limit)
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Policy:
    name: str = ""
    #: adapter name loaded at start, or None for the bare model
    adapter: str | None = None
    guidance_scale: float = GuidanceConfig.guidance_scale
    cfg_space: str = GuidanceConfig.cfg_space
    max_tokens: int = 512
    #: may the client set guidance_scale / cfg_space per request
    allow_override: bool = False
    #: what the guided negative rows run on (`unleak.decoding.generator.NEGATIVE_BRANCHES`)
    negative: str = "adapter"
    #: log-probabilities: None (the default) refuses requests for them (403): the likely alternatives at a
    #: position where the defence wrote a placeholder can name the value it held back; k (0-20): allowed,
    #: with at most k alternatives per token (0: the chosen tokens' own only)
    max_top_logprobs: int | None = None
    #: an output filter behind the defence (not the method): the PII profile ("original", "strict") whose
    #: detector runs on every answer, what it finds replaced by `[REDACTED TYPE]` (`unleak.serve.redaction`);
    #: None: answers leave as the model wrote them
    redact_output: str | None = None

    def __post_init__(self) -> None:
        from unleak.decoding.generator import negative_adapter_for

        GuidanceConfig(self.guidance_scale, self.cfg_space)  # type: ignore[arg-type]
        negative_adapter_for(self.negative, self.adapter)
        if self.max_tokens < 1:
            raise UnleakError("max_tokens must be >= 1")
        if self.max_top_logprobs is not None and not 0 <= self.max_top_logprobs <= MAX_TOP_LOGPROBS:
            raise UnleakError(f"max_top_logprobs must be 0-{MAX_TOP_LOGPROBS} or null, got {self.max_top_logprobs}")
        if self.redact_output is not None:
            if self.redact_output not in PII_PROFILES:
                raise UnleakError(f"redact_output must be one of {', '.join(PII_PROFILES)} or null, got "
                                  f"{self.redact_output!r}")
            if self.max_top_logprobs is not None:
                raise UnleakError("redact_output and max_top_logprobs exclude each other: the tokens' "
                                  "log-probabilities would show what the filter replaced")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class PolicySet:
    policies: dict[str, Policy]
    by_hash: dict[str, str]

    def for_key(self, api_key: str | None) -> Policy | None:
        if not api_key:
            return None
        name = self.by_hash.get(key_hash(api_key))
        return self.policies.get(name) if name else None


def load_policies(path: str | Path, adapters: set[str] | frozenset[str] = frozenset()) -> PolicySet:
    p = Path(path)
    if not p.is_file():
        raise UnleakError(f"policy file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UnleakError(f"{p}: invalid YAML: {exc}") from None
    return policies_from_dict(data, adapters, source=str(p))


def policies_from_dict(data: Any, adapters: set[str] | frozenset[str] = frozenset(),
                       source: str = "<policies>") -> PolicySet:
    if not isinstance(data, dict) or not isinstance(data.get("policies"), dict) or not data["policies"]:
        raise UnleakError(f"{source}: needs a non-empty 'policies' mapping")
    unknown = set(data) - {"policies", "keys", "key_hashes"}
    if unknown:
        raise UnleakError(f"{source}: unknown top-level field(s) {sorted(unknown)}")
    policies = {}
    for name, body in data["policies"].items():
        where = f"{source}: policies.{name}"
        try:
            policies[name] = config_from_dict(Policy, {**(body or {}), "name": name}, source=where)
        except UnleakError as exc:
            raise UnleakError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        adapter = policies[name].adapter
        if adapter is not None and adapter not in adapters:
            raise UnleakError(f"{where}: adapter {adapter!r} is not loaded (loaded: {sorted(adapters) or 'none'}; "
                              "pass --adapter NAME=DIR)")
    by_hash: dict[str, str] = {}
    for field_name, hashed in (("keys", False), ("key_hashes", True)):
        for key, name in (data.get(field_name) or {}).items():
            if name not in policies:
                raise UnleakError(f"{source}: {field_name} entry {'<hash>' if hashed else '<key>'} ... points at "
                                  f"unknown policy {name!r}")
            by_hash[str(key).lower() if hashed else key_hash(str(key))] = name
    if not by_hash:
        raise UnleakError(f"{source}: no API keys (add 'keys' or 'key_hashes')")
    return PolicySet(policies, by_hash)
