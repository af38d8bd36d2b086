"""Training profiles: every YAML parses and validates; overrides, TRAIN_PROFILE and bad input."""

from __future__ import annotations

import pytest

from qaforge.train.profiles import (ALL_LORA_TARGETS, TrainConfig, load_profile, profile_names,
                                    read_profile_yaml)

EXPECTED = {"fast_v1", "fast_v5", "fast_v7", "fast_v7_final", "tiny", "fast_v7_long"}


def test_all_profiles_exist_and_validate():
    assert EXPECTED <= set(profile_names())
    for name in EXPECTED:
        config = load_profile(name)
        assert isinstance(config, TrainConfig)
        assert config.profile == name


def test_fast_v7_is_the_seed_configuration():
    config = load_profile("fast_v7")
    assert (config.max_seq_len, config.lora_r, config.lora_alpha, config.lora_dropout) == (512, 32, 64, 0.10)
    assert config.learning_rate == 1.5e-4 and config.weight_decay == 0.01 and config.num_epochs == 2
    assert config.effective_batch_size == 16
    assert config.target_modules == list(ALL_LORA_TARGETS)
    assert not config.train_on_exam


def test_fast_v7_final_inherits_fast_v7_and_trains_on_exam():
    final, base = load_profile("fast_v7_final"), load_profile("fast_v7")
    assert final.train_on_exam is True
    differing = {k for k, v in final.to_dict().items() if base.to_dict()[k] != v}
    assert differing == {"train_on_exam", "profile"}


def test_tiny_profile_is_a_fast_cpu_demo():
    tiny = load_profile("tiny")
    assert tiny.max_seq_len == 256 and tiny.lora_r == 16 and 1e-3 <= tiny.learning_rate <= 3e-3


def test_overrides_apply_and_none_does_not_override():
    config = load_profile("fast_v7", learning_rate=1e-3, lora_r=None, data="x.jsonl")
    assert config.learning_rate == 1e-3 and config.lora_r == 32 and config.data == "x.jsonl"


def test_train_profile_env_is_honoured(monkeypatch):
    monkeypatch.setenv("TRAIN_PROFILE", "fast_v1")
    assert load_profile().profile == "fast_v1"
    monkeypatch.delenv("TRAIN_PROFILE")
    assert load_profile().profile == "fast_v7"


@pytest.mark.parametrize("overrides, message", [
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"target_modules": ["q_proj", "attn"]}, "unknown target_modules"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"max_seq_len": 8}, "max_seq_len"),
    ({"lr_scheduler": "magic"}, "lr_scheduler"),
    ({"no_such_key": 1}, "unknown override"),
    ({"profile_steps": "5-5"}, "profile_steps"),
    ({"profile_steps": "40"}, "profile_steps"),
])
def test_bad_values_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_profile("fast_v7", **overrides)


def test_unknown_profile_lists_available():
    with pytest.raises(ValueError, match="fast_v7"):
        load_profile("fast_v99")


def test_yaml_with_unknown_key_and_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("lora_r: 4\nlearning_rate: 1.0e-3\n")
    (tmp_path / "b.yaml").write_text("base: a\nlora_r: 8\n")
    (tmp_path / "bad.yaml").write_text("lora_rank: 8\n")
    values = read_profile_yaml("b", tmp_path)
    assert values["lora_r"] == 8 and values["learning_rate"] == 1e-3 and values["profile"] == "b"
    with pytest.raises(ValueError, match="unknown keys"):
        read_profile_yaml("bad", tmp_path)


def test_comma_separated_targets_and_output_dir_default():
    config = TrainConfig(target_modules="q_proj, v_proj", model="/models/Qwen3-0.6B", profile="fast_v7")
    assert config.target_modules == ["q_proj", "v_proj"]
    assert str(config.resolved_output_dir()) == "outputs/fast_v7_Qwen3-0.6B"


def test_cli_rejects_bad_override_without_training():
    from typer.testing import CliRunner
    import typer

    from qaforge.train.command import train

    app = typer.Typer()
    app.command()(train)
    result = CliRunner().invoke(app, ["--profile", "fast_v7", "--lora-dropout", "2.0"])
    assert result.exit_code != 0
    assert "lora_dropout" in result.output
    result = CliRunner().invoke(app, ["--profile", "fast_v7", "--set", "nonsense"])
    assert result.exit_code != 0


def test_cuda_graphs_auto_policy(monkeypatch):
    """Auto (None) turns CUDA graphs on only for long runs; never on CPU, without compile, or under DDP."""
    from qaforge.train.model import CUDA_GRAPHS_MIN_STEPS, use_cuda_graphs

    auto = load_profile("fast_v7")
    assert auto.cuda_graphs is None
    assert not use_cuda_graphs(auto, "cuda", True, 388)  # fast_v7 on the seed's 3,099 pairs
    assert use_cuda_graphs(auto, "cuda", True, CUDA_GRAPHS_MIN_STEPS)
    assert not use_cuda_graphs(auto, "cpu", True, 10**6)
    assert not use_cuda_graphs(auto, "cuda", False, 10**6)
    assert use_cuda_graphs(load_profile("fast_v7", cuda_graphs=True), "cuda", True, 10)
    assert not use_cuda_graphs(load_profile("fast_v7", cuda_graphs=False), "cuda", True, 10**6)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not use_cuda_graphs(load_profile("fast_v7", cuda_graphs=True), "cuda", True, 10**6)


def test_every_packaged_profile_has_a_one_line_description():
    from qaforge.train.profiles import list_profiles

    described = dict(list_profiles())
    assert EXPECTED <= set(described)
    for name, line in described.items():
        assert 20 < len(line) <= 120 and "\n" not in line, (name, line)
    assert "CONTAMINATED" in described["fast_v7_final"]


def test_description_falls_back_to_the_first_sentence(tmp_path):
    from qaforge.train.profiles import profile_description

    path = tmp_path / "mine.yaml"
    path.write_text("description: >\n  Short rows for a smoke test. Nothing else.\nlora_r: 4\n", encoding="utf-8")
    assert profile_description(path) == "Short rows for a smoke test."


def test_a_yaml_path_may_name_a_packaged_base_or_one_beside_it(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: fast_v7\nlora_r: 8\n", encoding="utf-8")
    (tmp_path / "local_base.yaml").write_text("lora_r: 4\nnum_epochs: 3\n", encoding="utf-8")
    (tmp_path / "child.yaml").write_text("base: local_base\nlearning_rate: 1.0e-3\n", encoding="utf-8")
    mine = load_profile(str(tmp_path / "mine.yaml"))
    assert mine.profile == "mine" and mine.lora_r == 8 and mine.lora_alpha == 64  # the rest from fast_v7
    child = load_profile(str(tmp_path / "child.yaml"))
    assert (child.lora_r, child.num_epochs, child.learning_rate) == (4, 3, 1e-3)


def test_missing_yaml_path_and_wrong_types_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="profile names: .*fast_v7"):
        load_profile(str(tmp_path / "nope.yaml"))
    (tmp_path / "typed.yaml").write_text("lora_r: eight\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"typed.yaml: lora_r must be int, got 'eight'"):
        load_profile(str(tmp_path / "typed.yaml"))
    (tmp_path / "broken.yaml").write_text("lora_r: 8\ntarget_modules: [q_proj\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.yaml:\d+: not valid YAML"):
        load_profile(str(tmp_path / "broken.yaml"))
    with pytest.raises(ValueError, match="num_epochs must be float"):
        load_profile("tiny", num_epochs="two")


def test_qaforge_profiles_lists_names_and_descriptions():
    from typer.testing import CliRunner

    from qaforge.cli import app

    result = CliRunner().invoke(app, ["profiles"])
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "fast_v7 (default)" in result.output and "CONTAMINATED" in result.output
