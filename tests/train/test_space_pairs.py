"""Space pairs: a pair also cut after the lone space token before its value, the extraction attack's state."""

from __future__ import annotations

import json
import subprocess
import sys

from unleak.config import OrpoSettings, PromptConfig
from unleak.pairs.build import cfg_variant
from unleak.train.data import PreferenceCollator, space_pairs, tokenize_pair, tokenize_space_pair
from unleak.train.twins import twin_units

DIALOG = [{"role": "user", "content": "How do I reach the courier?"}]


def pair(chosen: str, rejected: str, role: str = "assistant", dialog: list | None = None) -> dict:
    return {"prompt": dialog or DIALOG, "chosen": [{"role": role, "content": chosen}],
            "rejected": [{"role": role, "content": rejected}], "mode": "redact"}


PHONE = pair("Call [REDACTED PHONE] today.", "Call 573.500.4438 today.")
NAME = pair("Ask [REDACTED NAME] today.", "Ask Ann Lee today.")


def decoded(tok, ids: list[int]) -> list[str]:
    return [tok.decode([i]) for i in ids]


def test_a_digit_value_gives_a_pair_whose_prompt_ends_in_the_lone_space(default_tokenizer):
    tok = default_tokenizer
    cut = tokenize_pair(PHONE, tok, 2048, 1900)
    assert tok.decode(cut["prompt_ids"]).endswith("assistant\nCall")
    assert decoded(tok, cut["rejected_ids"])[:2] == [" ", "5"]  # the memorised number's own tokens
    space = tokenize_space_pair(PHONE, tok, 2048, 1900)
    assert decoded(tok, space["prompt_ids"])[-2:] == ["Call", " "]
    assert tok.decode(space["chosen_ids"]) == "[REDACTED PHONE] today.<|im_end|>"
    assert tok.decode(space["rejected_ids"]) == "573.500.4438 today.<|im_end|>"
    # prompt + rejected is the memorised answer token for token as the model reads it: the attack's state
    full = tok(tok.apply_chat_template(DIALOG + PHONE["rejected"], tokenize=False), add_special_tokens=False)
    assert full["input_ids"][: len(space["prompt_ids"]) + len(space["rejected_ids"])] == \
        space["prompt_ids"] + space["rejected_ids"]


def test_no_pair_where_the_space_belongs_to_the_values_first_token_or_there_is_no_space(default_tokenizer):
    tok = default_tokenizer
    assert decoded(tok, tokenize_pair(NAME, tok, 2048, 1900)["rejected_ids"])[0] == " Ann"
    assert tokenize_space_pair(NAME, tok, 2048, 1900) is None
    assert tokenize_space_pair(pair("Phone:[REDACTED PHONE]", "Phone:5735004438"), tok, 2048, 1900) is None
    assert tokenize_space_pair(pair("Nothing to share.", "573.500.4438 is mine."), tok, 2048, 1900) is None


def test_a_user_turn_pair_is_cut_inside_the_users_message(default_tokenizer):
    tok = default_tokenizer
    dialog = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"}]
    user = pair("The courier has my phone [REDACTED PHONE].", "The courier has my phone 573.500.4438.", "user", dialog)
    space = tokenize_space_pair(user, tok, 2048, 1900)
    assert tok.decode(space["prompt_ids"]).endswith("<|im_start|>user\nThe courier has my phone ")
    assert tok.decode(space["chosen_ids"]) == "[REDACTED PHONE].<|im_end|>"
    assert tok.decode(space["rejected_ids"]).startswith("573.500")


def test_space_pairs_mark_their_rows_and_twin_only_with_each_other(default_tokenizer):
    tok = default_tokenizer
    rows = cfg_variant([PHONE, NAME], PromptConfig())
    marked, data = space_pairs(rows, tok, 2048, 1900)
    # the phone pair under both prompts; under the negative one the number is the chosen side
    assert [(r["system"], r["split"]) for r in marked] == [("positive", "space"), ("negative", "space")]
    assert tok.decode(data[0]["rejected_ids"]).startswith("573") and tok.decode(data[1]["chosen_ids"]).startswith("573")
    assert all(decoded(tok, d["prompt_ids"])[-1] == " " for d in data)
    assert twin_units(rows + marked) == [[0, 1], [2, 3], [4, 5]]
    # whatever the order, a space pair twins with the other prompt's space pair, not with its own cut
    mixed = [rows[0], marked[1], marked[0], rows[1]]
    assert twin_units(mixed) == [[0, 3], [2, 1]]


def test_orpo_trains_the_space_pairs_too(tiny_model_dir, tmp_path, monkeypatch):
    from unleak.train.orpo import train_orpo

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [PHONE, NAME]))
    prompts: list[list[int]] = []
    collate = PreferenceCollator.__call__

    def spy(self, batch):
        prompts.extend(ex["prompt_ids"] for ex in batch)
        return collate(self, batch)

    monkeypatch.setattr(PreferenceCollator, "__call__", spy)
    from unleak.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    space_id = tok(" ", add_special_tokens=False)["input_ids"]
    for on in (False, True):
        prompts.clear()
        out = train_orpo(str(tiny_model_dir), path, tmp_path / f"orpo-{on}", quiet=True,
                         settings=OrpoSettings(epochs=1, save_per_epoch=False, space_pairs=on))
        settings = json.loads((out.parent / "settings.json").read_text())
        assert settings["space_pairs"] is on and settings["rows"] == len(prompts) == (3 if on else 2)
        assert sum(p[-1:] == space_id for p in prompts) == on


def test_cli_space_pairs_flag(tiny_model_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PHONE) + "\n")
    out = tmp_path / "o"
    run = subprocess.run([sys.executable, "-m", "unleak.cli", "train", "orpo", "--model", str(tiny_model_dir),
                          "--pairs", str(path), "--out", str(out), "--space-pairs", "--epochs", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    settings = json.loads((out / "settings.json").read_text())
    assert settings["space_pairs"] is True and settings["rows"] == 2
