"""Config: YAML + dotted overrides, and one clear line for every mistake."""

from __future__ import annotations

import pytest

from cai_pipeline.config import apply_override, load_config
from cai_pipeline.errors import UserError


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, "out_dir: x\n"),
                      ["engine.kind=hf", "prompts.limit=4", "sample.temperature=0.5", "sample.stop=[END]",
                       "out_dir=outputs/y", "judge.reasoning=true"])
    assert cfg.engine.kind == "hf"
    assert cfg.prompts.limit == 4 and isinstance(cfg.prompts.limit, int)
    assert cfg.sample.temperature == 0.5
    assert cfg.sample.stop == ["END"]
    assert cfg.out_dir == "outputs/y"
    assert cfg.judge.reasoning is True


def test_defaults_follow_the_design():
    cfg = load_config(None, ["out_dir=o"])
    assert cfg.revise.rounds == 2 and cfg.judge.principles == 2 and cfg.judge.min_margin == 0.05
    assert cfg.judge.drop_inconsistent is True and cfg.shard_size == 64 and cfg.model == "embedded"


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'sample.temprature'; did you mean 'sample.temperature'"):
        load_config(write(tmp_path, "out_dir: x\nsample:\n  temprature: 0.3\n"))


def test_unknown_override_names_the_nearest(tmp_path):
    with pytest.raises(UserError, match=r"did you mean 'prompts.limit'"):
        load_config(write(tmp_path, "out_dir: x\n"), ["prompts.limt=3"])


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml: sample.n: .*integer.*\(got 'many'\)"):
        load_config(write(tmp_path, "out_dir: x\nsample:\n  n: many\n"))


def test_yaml_syntax_error_gives_the_line(tmp_path):
    with pytest.raises(UserError, match=r"c.yaml:4: YAML syntax error: expected"):
        load_config(write(tmp_path, "out_dir: x\nsample:\n  n: [1, 2\n  top_p: 1\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match=r"nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_required_key(tmp_path):
    with pytest.raises(UserError, match=r"out_dir: required"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_unknown_stage(tmp_path):
    """The config names stages; the stage list knows which exist: every command loads through load_run_config."""
    from cai_pipeline.cli.common import load_run_config

    path = write(tmp_path, "out_dir: x\nstages: [sampel]\n")
    with pytest.raises(UserError, match=r"c.yaml: stages: unknown stage 'sampel'; did you mean 'sample'"):
        load_run_config(path, [])


def test_bad_override_shape():
    with pytest.raises(UserError, match=r"expected key=value"):
        apply_override({}, "prompts.limit")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match=r"expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
