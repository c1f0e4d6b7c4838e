"""RunConfig: typed, frozen, round-trips to YAML, and rejects bad values naming the field."""
import dataclasses

import pytest
import yaml

from scaling.config import DEFAULT_STEPS, ConfigError, RunConfig, apply_overrides


def test_yaml_round_trip_preserves_every_field(tmp_path):
    cfg = RunConfig.load(None, ["method=dino", "size=tiny", "drop_rate=0.25", "global_batch=128",
                                "micro_batch=32", "world_size=2", "samples=4096", "dino.local_crops=4",
                                "dino.global_scale=[0.5, 1.0]", "data.frames=16"])
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = RunConfig.load(path)
    assert again == cfg
    assert again.dino.global_scale == (0.5, 1.0)
    assert again.accumulation == 2 and again.total_steps == 32


def test_config_is_frozen():
    cfg = RunConfig(steps=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = "base"


def test_method_defaults_are_resolved_and_written():
    vatt, dino = RunConfig(steps=1), RunConfig(method="dino", steps=1)
    assert (vatt.lr, vatt.lr_scaling, vatt.weight_decay) == (1e-4, "none", 0.0)
    assert (dino.lr, dino.lr_scaling, dino.weight_decay, dino.weight_decay_end) == (5e-4, "linear", 0.04, 0.4)
    assert "lr: 0.0005" in dino.to_yaml()


def test_each_method_defaults_to_its_papers_optimisation():
    """VATT's official configs: Adam eps 1e-7, lr 1e-4, warm-up over 1% of the steps, cosine to
    5e-5, dropout 0.1, no stochastic depth, no clipping. DINO's: warm-up 10%, cosine to 1e-6,
    stochastic depth 0.1, no dropout, each parameter's gradient clipped at 3.0. A set value wins."""
    vatt, dino = RunConfig(steps=1), RunConfig(method="dino", steps=1)
    assert (vatt.adam_eps, vatt.lr, vatt.warmup_fraction, vatt.min_lr) == (1e-7, 1e-4, 0.01, 5e-5)
    assert (vatt.dropout, vatt.drop_path, vatt.clip_grad) == (0.1, 0.0, 0.0)
    assert (dino.adam_eps, dino.warmup_fraction, dino.min_lr, dino.dropout, dino.drop_path) == (1e-8, 0.1, 1e-6, 0.0, 0.1)
    assert (dino.clip_grad, dino.clip_mode, vatt.clip_mode) == (3.0, "per_param", "global")
    mine = RunConfig(steps=1, warmup_fraction=0.1, min_lr=1e-6, dropout=0.0, drop_path=0.1, adam_eps=1e-8)
    assert (mine.warmup_fraction, mine.min_lr, mine.dropout, mine.drop_path, mine.adam_eps) == (0.1, 1e-6, 0.0, 0.1, 1e-8)


@pytest.mark.parametrize("scaling,expected", [("linear", 5e-4 * 2), ("sqrt", 5e-4 * 2 ** 0.5), ("none", 5e-4)])
def test_lr_batch_scaling_rule(scaling, expected):
    cfg = RunConfig(method="dino", steps=1, global_batch=512, micro_batch=64, lr_scaling=scaling)
    assert cfg.peak_lr == pytest.approx(expected)


def test_overrides_parse_yaml_values_into_nested_sections():
    raw = apply_overrides({"data": {"frames": 8}}, ["data.frames=16", "vatt.shared_backbone=true", "lr=3e-4"])
    assert raw == {"data": {"frames": 16}, "vatt": {"shared_backbone": True}, "lr": 3e-4}


@pytest.mark.parametrize("overrides,field,allowed", [
    (["size=huge"], "size", "'nano', 'micro', 'tiny', 'small', 'base', 'medium', 'large'"),
    (["method=clip"], "method", "'vatt', 'dino', 'simclr'"),
    (["drop_rate=1.0"], "drop_rate", "[0.0, 1.0)"),
    (["drop_rate=-0.1"], "drop_rate", "[0.0, 1.0)"),
    (["global_batch=100", "micro_batch=64"], "global_batch", "multiple of micro_batch"),
    (["steps=0"], "steps", "> 0"),
    (["gns.every_steps=10", "global_batch=64", "micro_batch=64"], "gns.every_steps", "must exceed micro_batch"),
    (["gns.every_steps=-1"], "gns.every_steps", ">= 0"),
    (["gns.ema=1.0"], "gns.ema", "[0.0, 1.0)"),
    (["steps=-5"], "steps", "> 0"),
    (["zero_stage=4"], "zero_stage", "0, 1, 2, 3"),
    (["precision=fp8"], "precision", "'auto', 'fp32', 'bf16', 'fp16'"),
    (["lr_scaling=cubic"], "lr_scaling", "'linear', 'sqrt', 'none'"),
    (["data.source=s3"], "data.source", "'synthetic', 'manifest', 'webdataset', 'images'"),
    (["data.resolution=60"], "data.resolution", "16-pixel voxel"),
    (["data.difficulty=2"], "data.difficulty", "[0.0, 1.0]"),
    (["offload=true"], "offload", "zero_stage=3"),
    (["sise=tiny"], "sise", "allowed fields"),
    (["data.frame=8"], "data.frame", "allowed fields"),
    (["vatt.audio_size=xl"], "vatt.audio_size", "'nano'"),
    (["dino.local_scale=[0.5, 0.1]"], "dino.local_scale", "0 < lo <= hi <= 1"),
    (["dino.koleo_weight=-0.1"], "dino.koleo_weight", ">= 0"),
    (["clip_mode=layer"], "clip_mode", "'global', 'per_param'"),
    (["dropout=1.0"], "dropout", "[0.0, 1.0)"),
    (["adam_eps=0"], "adam_eps", "> 0"),
    (["dino.distill_weight=-1"], "dino.distill_weight", ">= 0"),
    (["dino.distill_weight=0"], "dino.distill_weight", "one of the two must be > 0"),
    (["steps=5", "samples=640"], "steps", "not both"),
    (["steps=5", "samples=640", "zero_stage=4"], "zero_stage", "0, 1, 2, 3"),  # both set: not the first error
    (["samples=1000"], "samples", "multiple of global_batch"),
    (["data.train_size=100", "micro_batch=64", "world_size=2", "global_batch=128"], "data.train_size", "at least micro_batch"),
])
def test_invalid_values_fail_at_construction_naming_field_and_allowed(overrides, field, allowed):
    base = ["steps=10"] if not any(o.startswith(("steps", "samples")) for o in overrides) else []
    if overrides == ["samples=1000"]:
        base = ["steps=null"]
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, base + overrides)
    assert err.value.field == field
    assert allowed in str(err.value)


def test_a_config_without_steps_or_samples_trains_the_default_steps():
    cfg = RunConfig()
    assert cfg.steps is None and cfg.samples is None and cfg.total_steps == DEFAULT_STEPS
    assert cfg.total_samples == DEFAULT_STEPS * cfg.global_batch
    assert RunConfig.load(None, ["samples=640"]).total_steps == 10 and RunConfig(steps=7).total_steps == 7
    assert RunConfig.load(None, ["steps=null"]).total_steps == DEFAULT_STEPS
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_without_steps_a_bad_field_is_named_not_steps():
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, ["zero_stage=4"])
    assert err.value.field == "zero_stage"


@pytest.mark.parametrize("text, field", [
    ("size: [tiny\n", "config"),                                   # unclosed flow sequence
    ("a: 1\n  b: 2\n", "config"),                                  # bad indentation
    ('!!python/object/apply:os.system ["true"]\n', "config"),      # no arbitrary objects
    ('size: !!python/object/apply:os.system ["true"]\n', "config"),
])
def test_a_file_that_is_not_yaml_is_a_config_error(tmp_path, text, field):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        RunConfig.load(path)
    assert err.value.field == field and "is not valid YAML" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, field", [("size=[", "size"), ("data.frames={a", "data.frames"),
                                             ("lr=!!python/name:os.system", "lr")])
def test_an_override_that_is_not_yaml_names_its_key(override, field):
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, [override])
    assert err.value.field == field and "not a valid YAML value" in str(err.value)


def test_bad_override_syntax_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        RunConfig.load(None, ["size"])
    with pytest.raises(ConfigError, match="no such config file"):
        RunConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.load(bad)


def test_vatt_refuses_image_folders():
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, ["steps=1", "data.source=images", "data.path=/x"])
    assert err.value.field == "data.source"


# ----------------------------------------------------------------------------- scaling.validate
def test_validate_is_torch_free_and_config_reexports_its_error():
    import subprocess
    import sys

    code = "import scaling.validate, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from scaling import config, validate

    assert config.ConfigError is validate.ConfigError and issubclass(ConfigError, ValueError)
    assert config.load_named_yaml is validate.load_named_yaml


@pytest.mark.parametrize("check, value", [
    ("integer", True), ("integer", 1.0), ("integer", "3"), ("number", False), ("number", "0.5"),
    ("number", float("nan")), ("number", float("inf")), ("number", -float("inf")), ("pair", (0.1, True)),
    ("pair", "ab"), ("pair", (0.5, 0.1)), ("pair", (0.1, float("nan"))), ("flag", 1), ("flag", "true"),
    ("choice", True), ("choice", "c"), ("text", ""), ("text", 3), ("text", None), ("mapping", [1]),
])
def test_each_checker_names_the_field_and_refuses_bools_and_non_finite_numbers(check, value):
    from scaling import validate

    args = {"choice": (("a", 1),)}.get(check, ())
    with pytest.raises(ConfigError) as err:
        getattr(validate, check)("sec.key", value, *args)
    assert err.value.field == "sec.key" and str(err.value).startswith("sec.key: ")
    assert isinstance(err.value, ValueError)


def test_checkers_return_the_value_normalised_and_phrase_the_bounds():
    from scaling import validate
    from scaling.validate import choice, flag, integer, mapping, number, pair, text

    assert integer("n", 3, minimum=1) == 3 and number("x", 2) == 2.0 and isinstance(number("x", 2), float)
    assert pair("s", [0, 1], minimum=0, maximum=1) == (0.0, 1.0)
    assert flag("f", False) is False and choice("c", 1, (0, 1)) == 1 and choice("c", True, (True, False))
    assert text("t", None, optional=True) is None and mapping("m", None) == {}
    assert number("x", float("inf"), finite=False) == float("inf")
    assert validate.finite_number(1.5) and not validate.finite_number(True)
    for call, message in [
        (lambda: integer("n", 0, exclusive_minimum=0), "n: got 0; must be an integer > 0"),
        (lambda: integer("n", -1, minimum=0, note="profile 'p'"), "n: got -1; must be an integer >= 0 (profile 'p')"),
        (lambda: number("x", 1.0, minimum=0.0, exclusive_maximum=1.0), "x: got 1.0; must be a finite number in [0.0, 1.0)"),
        (lambda: pair("s", (0.5, 0.1), exclusive_minimum=0, maximum=1),
         "s: got (0.5, 0.1); must be [lo, hi] with 0 < lo <= hi <= 1"),
        (lambda: choice("c", "z", ("a", "b")), "c: got 'z'; allowed values: 'a', 'b'"),
        (lambda: text("t", None), "t: is required: must be a non-empty string"),
        (lambda: mapping("m", [1]), "m: must be a mapping, got list"),
    ]:
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == message


@pytest.mark.parametrize("value", ["tiny", "true", "null", "", "a: b", "3e-4", 1e-5, 0.1, 7, True, None, [1, "x"],
                                   (0.5, 1.0), {"a": [1, 2]}])
def test_yaml_value_reads_back_as_the_same_value(value):
    import yaml

    from scaling.validate import yaml_value

    expected = list(value) if isinstance(value, tuple) else value
    assert yaml.safe_load(yaml_value(value)) == expected


@pytest.mark.parametrize("overrides, field", [
    (["global_batch=true"], "global_batch"),                  # a bool is not an integer
    (["lr=.nan"], "lr"),                                      # nor a finite number
    (["vatt.temperature=.inf"], "vatt.temperature"),
    (["data.fps=false"], "data.fps"),
    (["activation_checkpointing=1"], "activation_checkpointing"),
    (["zero_stage=true"], "zero_stage"),                      # True == 1, but not a ZeRO stage
    (["dino.global_scale=0.5"], "dino.global_scale"),         # not a pair
    (["dino.local_scale=[0.1, true]"], "dino.local_scale"),
    (["vatt.mask_same_video=1"], "vatt.mask_same_video"),
    (["data.repeats=0"], "data.repeats"),
    (["data.repeats=2"], "data.repeats"),                     # synthetic clips: nothing decoded to repeat
    (["data.repeats=3", "data.source=manifest", "data.path=m.jsonl", "micro_batch=4"], "data.repeats"),
])
def test_bools_and_non_finite_values_fail_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, ["steps=10", "method=dino", *overrides])
    assert err.value.field == field


def test_replace_round_trips_strings_and_tuples():
    cfg = RunConfig(steps=1, method="dino")
    assert cfg.replace(**{"dino.global_scale": (0.5, 1.0)}).dino.global_scale == (0.5, 1.0)
    assert cfg.replace(**{"data.source": "manifest", "data.path": "a: b.jsonl"}).data.path == "a: b.jsonl"


def test_vatt_needs_two_clips_per_batch_norm_batch():
    with pytest.raises(ConfigError, match="micro_batch.*at least 2 clips"):
        RunConfig.load(None, ["method=vatt", "global_batch=8", "micro_batch=1"])
    RunConfig.load(None, ["method=vatt", "global_batch=8", "micro_batch=1", "world_size=2"])
    RunConfig.load(None, ["method=dino", "global_batch=8", "micro_batch=1"])
