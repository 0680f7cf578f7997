"""Settings declared once: checked when built (one line naming the setting and the allowed values), generated
CLI options, one default per setting, and presets whose resolved values did not move."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bookmatch.calibration import CalibrateConfig
from bookmatch.cli import main
from bookmatch.config import ConfigError, build_config, config_to_dict
from bookmatch.evaluation.evaluate import EvaluateConfig
from bookmatch.models.bi_encoder import BiEncoderConfig
from bookmatch.models.settings import BiEncoderSettings
from bookmatch.pipeline import load_stage_options
from bookmatch.prepare.config import PrepareConfig
from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

STAGE_CLASSES = {
    "prepare": PrepareConfig,
    "cross": CrossTrainConfig,
    "contrastive": ContrastiveTrainConfig,
    "calibrate": CalibrateConfig,
    "evaluate": EvaluateConfig,
}
RESOLVED = Path(__file__).parent / "data" / "resolved_presets.json"


def resolved_presets() -> dict:
    """Every preset's stage configs as the pipeline builds them (paths and the teacher are the pipeline's)."""
    out = {}
    for preset in ("cpu-small", "gpu"):
        options = load_stage_options(preset)
        out[preset] = {
            stage: config_to_dict(
                build_config(cls, overrides={k: v for k, v in options[stage].items() if k != "teacher"})
            )
            for stage, cls in STAGE_CLASSES.items()
        }
    return out


def test_presets_resolve_to_the_values_they_had_before_the_settings_were_declared_once():
    """tests/data/resolved_presets.json was written by the code before this change (commit 1a90515): every
    stage's every value, for cpu-small (`make run`) and gpu, is unchanged. Settings added since, on purpose:
    attention_dropout (cross: the backbone's own; contrastive: 0)."""
    assert resolved_presets() == json.loads(RESOLVED.read_text())


def test_the_model_settings_have_one_default():
    model_fields = {f.name: f.default for f in dataclasses.fields(BiEncoderSettings)}
    assert {"lexical_buckets", "name_top_k", "pooled_cosine"} <= set(model_fields)
    for cls in (ContrastiveTrainConfig, BiEncoderConfig):
        inherited = {f.name: f.default for f in dataclasses.fields(cls) if f.name in model_fields}
        assert inherited == model_fields, cls


@pytest.mark.parametrize(
    "cls, values, expected",
    [
        (ContrastiveTrainConfig, {"lr": -1.0}, "lr must be a number >= 0, got -1.0"),
        (ContrastiveTrainConfig, {"lr": {"a": 1}}, 'lr must be a number >= 0, got {"a": 1}'),
        (ContrastiveTrainConfig, {"lr": float("nan")}, "lr must be a number >= 0"),
        (ContrastiveTrainConfig, {"max_seq_length": -5}, "max_seq_length must be a whole number >= 1, got -5"),
        (
            ContrastiveTrainConfig,
            {"side_features": "bogus"},
            'side_features must be one of style_v1, none, got "bogus"',
        ),
        (ContrastiveTrainConfig, {"seed": None}, "seed must be a whole number >= 0, got null"),
        (ContrastiveTrainConfig, {"max_steps": 1.5}, "max_steps must be a whole number >= 0, got 1.5"),
        (ContrastiveTrainConfig, {"max_steps": -3}, "max_steps must be a whole number >= 0, got -3"),
        (ContrastiveTrainConfig, {"eval_steps": True}, "eval_steps must be a whole number >= 1, got true"),
        (ContrastiveTrainConfig, {"pooled_cosine": "maybe"}, 'pooled_cosine must be true or false, got "maybe"'),
        (ContrastiveTrainConfig, {"mixed_precision": True}, "quote the value"),
        (CrossTrainConfig, {"lr": "fast"}, 'lr must be a number >= 0, got "fast"'),
        (PrepareConfig, {"overlap": 14}, "overlap must be < chunk_size"),
        (PrepareConfig, {"n_positive_per_book": -1}, "n_positive_per_book must be a whole number >= 0 or null"),
        (PrepareConfig, {"splitter": 3}, 'splitter must be one of regex, spacy, got "3"'),
        (CalibrateConfig, {"cohort_size": -1}, "cohort_size must be a whole number >= 0"),
        (EvaluateConfig, {"prefilter_threshold": 2}, "prefilter_threshold must be a number >= 0 and <= 1 or null"),
    ],
)
def test_every_bad_value_is_one_line_naming_the_setting(cls, values, expected):
    with pytest.raises(ConfigError) as raised:
        build_config(cls, settings=values, where="stage: ")
    message = str(raised.value)
    assert expected in message and message.startswith("stage: ") and "\n" not in message
    with pytest.raises(ValueError):  # built from Python, the same checks hold
        cls(**values)


def test_text_and_yaml_values_take_the_declared_types(tmp_path):
    config = build_config(
        ContrastiveTrainConfig,
        settings={"lr": "1e-4", "max_steps": 7.0, "epochs": "2", "mixed_precision": False, "cpu": "yes"},
    )
    assert (config.lr, config.max_steps, config.epochs, config.mixed_precision, config.cpu) == (1e-4, 7, 2, "no", True)
    assert isinstance(config.max_steps, int) and isinstance(config.lr, float)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("mixed_precision: no\nhead_lr: 1\n")  # YAML 1.1 reads `no` as false
    loaded = build_config(ContrastiveTrainConfig, file=yaml_file)
    assert loaded.mixed_precision == "no" and loaded.head_lr == 1.0 and isinstance(loaded.head_lr, float)
    yaml_file.write_text("mixed_precision: off\n")  # off is false too: not a choice name, so it is read as no
    assert build_config(ContrastiveTrainConfig, file=yaml_file).mixed_precision == "no"


def test_pipeline_set_validates_every_stage_and_refuses_an_empty_value(tmp_path, monkeypatch):
    import bookmatch.prepare

    monkeypatch.setattr(bookmatch.prepare, "run_prepare", lambda *a, **k: pytest.fail("prepare ran"))
    out = tmp_path / "run"
    assert load_stage_options("cpu-small", sets=["prepare.holdout_authors="])["prepare"]["holdout_authors"] == ""
    for sets, expected in (
        (["contrastive.lr="], 'contrastive: lr must be a number >= 0, got ""'),
        (["contrastive.lr=-1"], "contrastive: lr must be a number >= 0, got -1.0"),
        (["contrastive.seed=null"], "contrastive: seed must be a whole number >= 0, got null"),
        (["contrastive.max_steps=1.5"], "contrastive: max_steps must be a whole number >= 0"),
        (["cross.side_features=none"], "cross: unknown option(s) side_features"),
        (["evaluate.max_pairs=0"], "evaluate: max_pairs must be a whole number >= 1 or null"),
    ):
        args = ["pipeline", "--out", str(out)] + [x for s in sets for x in ("--set", s)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 4, (sets, result.output)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_every_training_setting_is_a_cli_option_with_its_declared_help():
    for command, cls in (("cross", CrossTrainConfig), ("contrastive", ContrastiveTrainConfig)):
        result = CliRunner().invoke(main, ["train", command, "--help"], terminal_width=400)
        assert result.exit_code == 0
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in result.output, (command, flag)
        assert "Learning rate of the encoder (0 freezes it). [default: 1e-05]" in result.output or command == "cross"
    prepare_help = CliRunner().invoke(main, ["prepare", "--help"], terminal_width=400).output
    for f in dataclasses.fields(PrepareConfig):
        assert "--" + f.name.replace("_", "-") in prepare_help


def test_cli_values_are_checked_like_yaml_values(tmp_path):
    args = ["train", "contrastive", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args + ["--lr", "-1"])
    assert result.exit_code == 4 and "lr must be a number >= 0, got -1.0" in result.stderr
    result = CliRunner().invoke(main, args + ["--max-steps", "1.5"])  # click's own type check: a usage error
    assert result.exit_code == 2
    config_file = tmp_path / "c.yaml"
    config_file.write_text("lr: {a: 1}\n")
    result = CliRunner().invoke(main, args + ["--config", str(config_file)])
    assert result.exit_code == 4 and f'config {config_file}: lr must be a number >= 0, got {{"a": 1}}' in result.stderr


def test_a_nullable_setting_takes_null_from_the_cli():
    import click

    from bookmatch.cli.options import config_options

    @click.command()
    @config_options(ContrastiveTrainConfig)
    def command(**values):
        click.echo(repr(build_config(ContrastiveTrainConfig, overrides=values).attention_dropout))

    def run(*args: str) -> str:
        return CliRunner().invoke(command, list(args), catch_exceptions=False).output.strip()

    assert run() == "0.0"  # the bi-encoder's default
    assert run("--attention-dropout", "null") == "None"  # the backbone's own
    assert run("--attention-dropout", "0.25") == "0.25"
    with pytest.raises(ConfigError, match=r"attention_dropout must be a number >= 0 and <= 1 or null, got \"abc\""):
        run("--attention-dropout", "abc")
    assert build_config(ContrastiveTrainConfig, settings={"attention_dropout": "~"}).attention_dropout is None


_yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["no", "off", "auto", "1e-4", "1.5", "", "null"]),
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=st.sampled_from(sorted(STAGE_CLASSES)), data=st.data())
def test_fuzz_the_config_builder_raises_only_config_errors(stage, data):
    """Any mapping of (mostly known) option names to any YAML value: a config, or a ConfigError; never another
    exception (no TypeError from a comparison, no silently accepted wrong type)."""
    cls = STAGE_CLASSES[stage]
    names = [f.name for f in dataclasses.fields(cls)]
    values = data.draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=6), _yaml_values, max_size=4))
    try:
        config = build_config(cls, settings=values)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    for name, value in values.items():  # what was accepted kept its meaning
        built = getattr(config, name)
        if isinstance(value, bool) or value is None:
            assert built == value or (value is False and built == "no"), (name, value, built)
        elif isinstance(value, (int, float)) and isinstance(built, (int, float)):
            assert built == value, (name, value, built)


def test_prepare_sections_are_what_the_modules_take():
    """The chunking section is exactly the per-book scan's options (with the seed); every field belongs to one
    section or to the stage itself."""
    from bookmatch.config import section_values
    from bookmatch.prepare import config as prepare_config
    from bookmatch.prepare.scan import ChunkingOptions
    from bookmatch.prepare.shards import chunking_options

    config = PrepareConfig(chunk_size=9, overlap=2, gram_words=5, seed=3)
    chunking = section_values(config, prepare_config.ChunkingSettings)
    assert ChunkingOptions(**chunking, seed=config.seed) == chunking_options(config)
    sections = (
        prepare_config.ChunkingSettings,
        prepare_config.MiningSettings,
        prepare_config.DedupSettings,
        prepare_config.SplitSettings,
        prepare_config.PairSettings,
    )
    owned = [f.name for section in sections for f in dataclasses.fields(section)]
    assert len(owned) == len(set(owned))
    assert set(f.name for f in dataclasses.fields(PrepareConfig)) - set(owned) == {"books", "out", "workers", "seed"}


def test_a_model_folder_saved_before_the_signatures_existed_loads_with_them_off(tiny_encoder_dir, tmp_path):
    """Folders written before lexical_buckets / name_top_k / pooled_cosine existed have no such keys; with the
    model's one default now the tuned one (on), they must still load as what they were: without those features."""
    import torch

    from bookmatch.models.bi_encoder import CONFIG_NAME, BiEncoder

    torch.manual_seed(0)
    old = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=8,
        max_seq_length=32,
        classifier_hidden_dim=16,
        lexical_buckets=0,
        name_top_k=0,
        pooled_cosine=False,
    )
    folder = old.save_pretrained(tmp_path / "old")
    saved = json.loads((folder / CONFIG_NAME).read_text())
    for key in ("lexical_buckets", "name_top_k", "pooled_cosine"):
        del saved[key]
    (folder / CONFIG_NAME).write_text(json.dumps(saved))
    loaded = BiEncoder.from_pretrained(folder)
    assert (loaded.config.lexical_buckets, loaded.config.name_top_k, loaded.config.pooled_cosine) == (0, 0, False)
    assert loaded.lexical is None and BiEncoderConfig(backbone="x").lexical_buckets == 4096
