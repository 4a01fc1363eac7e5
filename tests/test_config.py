"""The method's constants have the original values; YAML fills the same dataclasses."""

import dataclasses

import pytest

from unleak.config import (
    EXCLUDED_NER_LABELS,
    GuidanceConfig,
    OrpoSettings,
    PromptConfig,
    SamplingConfig,
    load_config,
)
from unleak.errors import UnleakError


def test_original_values_are_the_defaults():
    prompts = PromptConfig()
    assert prompts.positive == "Do not provide any personal data."
    assert prompts.negative == "You should share personal data in the answers."
    assert prompts.generator == "Avoid using any personal data in the answers!"
    assert prompts.nudge_prefix.startswith("(Do not use any personal data, e.g. names, locations")
    assert set(EXCLUDED_NER_LABELS) == {"CARDINAL", "DATE", "PRODUCT", "ORDINAL"}
    orpo = OrpoSettings()
    assert (orpo.lora.r, orpo.lora.alpha, orpo.lora.dropout, orpo.lora.target_modules) == (16, 32, 0.01, "all-linear")
    assert (orpo.beta, orpo.epochs, orpo.batch_size, orpo.learning_rate) == (0.1, 3.0, 2, 1e-4)
    assert (orpo.min_lr_ratio, orpo.warmup_steps, orpo.max_length, orpo.max_prompt_length) == (0.1, 0, 2048, 1900)
    assert GuidanceConfig().guidance_scale == 3.0


def test_yaml_fills_nested_dataclass_and_overrides_win(tmp_path):
    path = tmp_path / "orpo.yaml"
    path.write_text("beta: 0.2\nlora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n")
    cfg = load_config(OrpoSettings, path, learning_rate=5e-5, epochs=None)
    assert cfg.beta == 0.2 and cfg.learning_rate == 5e-5 and cfg.epochs == 3.0
    assert cfg.lora.r == 8 and cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ("q_proj", "v_proj")


def test_unknown_yaml_key_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("betta: 0.2\n")
    with pytest.raises(UnleakError, match=r"bad.yaml.*'betta'"):
        load_config(OrpoSettings, path)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GuidanceConfig(guidance_scale=0),
        lambda: GuidanceConfig(guidance_scale=-1),
        lambda: GuidanceConfig(cfg_space="linear"),
        lambda: SamplingConfig(top_p=0),
        lambda: SamplingConfig(max_new_tokens=0),
        lambda: OrpoSettings(max_length=100, max_prompt_length=100),
    ],
)
def test_invalid_settings_are_rejected(make):
    with pytest.raises(UnleakError):
        make()


def test_a_partial_nested_mapping_keeps_the_base_values_and_kinds_are_checked(tmp_path):
    """The demo's own SFT settings differ from SftSettings' defaults: a YAML that sets one keeps the rest.
    (YAML 1.1 reads `2e-4` as a string; a float field takes it as the number.)"""
    from unleak.demo import DemoConfig

    path = tmp_path / "demo.yaml"
    path.write_text("sft:\n  learning_rate: 2e-4\norpo:\n  lora:\n    r: 32\ntest_limit: null\nguidance: [3]\n")
    base = DemoConfig()
    cfg = load_config(DemoConfig, path, base=base)
    assert cfg.sft.learning_rate == 2e-4 and cfg.orpo.lora.r == 32 and cfg.test_limit is None
    assert cfg.guidance == (3,)
    assert dataclasses.replace(cfg.sft, learning_rate=base.sft.learning_rate) == base.sft  # batch 2, loss on all...
    assert cfg.orpo.lora.alpha == base.orpo.lora.alpha and cfg.orpo.learning_rate == base.orpo.learning_rate
    for text, message in [("sft: 3\n", r"demo.yaml: field 'sft': expected a mapping of SftSettings"),
                          ("orpo:\n  epochs: three\n", r"demo.yaml:orpo: field 'epochs': expected a number"),
                          ("full: 1\n", r"field 'full': expected true or false"),
                          ("orpo:\n  lora:\n    rank: 8\n", r"demo.yaml:orpo:lora: unknown field 'rank'"),
                          ("variant: both\n", "variant must be 'plain' or 'cfg'")]:
        path.write_text(text)
        with pytest.raises(UnleakError, match=message):
            load_config(DemoConfig, path, base=base)


def test_the_readme_gpu_yaml_loads_as_a_demo_config(tmp_path):
    """The README's `gpu.yaml` example is a valid `--config` on top of the demo's defaults."""
    import re
    from pathlib import Path

    from unleak.demo import DemoConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(# gpu\.yaml.*?)```", readme, re.S)
    assert block, "README lost its gpu.yaml example"
    (tmp_path / "gpu.yaml").write_text(block.group(1))
    cfg = load_config(DemoConfig, tmp_path / "gpu.yaml", base=DemoConfig())
    assert (cfg.orpo.epochs, cfg.orpo.learning_rate, cfg.orpo.max_length, cfg.test_limit) == (3, 1e-4, 2048, None)
    assert (cfg.mmlu_limit, cfg.mmlu_format, cfg.variant) == (2000, "letters", DemoConfig().variant)


def test_a_demo_config_takes_the_generative_format_and_its_judge(tmp_path):
    from unleak.demo import DemoConfig

    (tmp_path / "judged.yaml").write_text("mmlu_format: generative\n"
                                          "judge: {url: 'http://127.0.0.1:8001/v1', model: judge-70b}\n")
    cfg = load_config(DemoConfig, tmp_path / "judged.yaml", base=DemoConfig())
    assert (cfg.mmlu_format, cfg.judge.url, cfg.judge.model) == ("generative", "http://127.0.0.1:8001/v1", "judge-70b")
    assert cfg.judge.answer_max_new_tokens == 256 and "{correct_answer}" in cfg.judge.prompt  # the rest: defaults
