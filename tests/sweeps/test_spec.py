"""Sweep specs are validated in full before anything is submitted; each mistake names its key."""
from pathlib import Path

import pytest
import yaml
from sweeptools import FIXED

from sweeps.spec import SPECS, SpecError, load_spec, point_key


def spec_file(tmp_path, **fields):
    spec = {"name": "t", "fixed": dict(FIXED), "dir": str(tmp_path / "sweep"), "grid": {"method": ["vatt", "dino"]}}
    spec.update(fields)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("fields, key", [
    ({"grdi": {"size": ["nano"]}}, "grdi"),                                         # unknown key
    ({"grid": {"size": []}}, "grid.size"),                                          # empty axis
    ({"grid": []}, "grid"),                                                         # no axes at all
    ({"grid": {"size": "nano"}}, "grid.size"),                                      # not a list
    ({"grid": {"size": ["nano", "nano"]}}, "grid.size"),                            # a repeated value
    ({"grid": {"size": ["nano", "enormous"]}}, "grid.size"),                        # RunConfig rejects it
    ({"grid": {"drop_rate": [0.0, 1.0]}}, "grid.drop_rate"),                        # RunConfig rejects it
    ({"grid": {"method": ["vatt", "clip"]}}, "grid.method"),
    ({"fixed": {**FIXED, "global_batch": 6}}, "fixed/global_batch"),               # fixed value rejected
    ({"search": {"lr": "loguniform(0, 1e-3)"}, "trials": 4}, "search.lr"),          # bad distribution
    ({"search": {"lr": "normal(1e-4, 1e-3)"}, "trials": 4}, "search.lr"),
    ({"search": {"lr": "loguniform(1e-5, 1e-3)"}}, "trials"),                       # search without trials
    ({"trials": 5}, "trials"),                                                      # trials on a grid
    ({"search": {"method": "choice(vatt, dino)"}, "trials": 2}, "search.method"),   # grid and search at once
    ({"objective": {"metric": "accuracy"}}, "objective.metric"),
    ({"objective": {"direction": "up"}}, "objective.direction"),
    ({"pruner": {"type": "sometimes"}}, "pruner.type"),
    ({"pruner": {"type": "median", "patience": 3}}, "pruner.patience"),
    ({"pruner": {"type": "median"}}, "pruner"),                                     # nothing to prune on
    ({"launcher": {"type": "cloud"}}, "launcher.type"),
    ({"launcher": {"type": "slurm"}}, "launcher.profile"),
    ({"launcher": {"type": "slurm", "profile": "nonexistent"}}, "launcher.profile"),
    ({"launcher": {"type": "local", "gpus": 8}}, "launcher.gpus"),
    ({"launcher": {"type": "local", "nproc": 0}}, "launcher.nproc"),
    ({"launcher": {"type": "local", "nproc": 2, "nodes": 2}}, "launcher.nodes"),    # local: one node
    ({"launcher": {"type": "slurm", "profile": "local", "nproc": 3, "nodes": 2}}, "launcher.nproc"),  # uneven
    ({"launcher": {"type": "slurm", "profile": "local", "nodes": 0}}, "launcher.nodes"),
    ({"retries": -1}, "retries"),
    ({"base": "no_such_config.yaml"}, "base"),
    ({"storage": "postgresql://nobody@127.0.0.1:1/none"}, "storage"),               # cannot be opened
    ({"storage": "journal:/proc/version/study.journal"}, "storage"),
    ({"storage": "not a url"}, "storage"),
])
def test_an_invalid_spec_names_its_key(tmp_path, fields, key):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, **fields))
    assert err.value.field == key, str(err.value)
    assert not (tmp_path / "sweep").exists()  # nothing was created


@pytest.mark.parametrize("fields, key", [
    ({"search": {"lr": "loguniform(1e-5, 1e-3)"}, "trials": True}, "trials"),       # a bool is not a count
    ({"seed": True}, "seed"),
    ({"retries": 1.5}, "retries"),
    ({"name": "two words"}, "name"),
    ({"per_method": {"clip": {}}}, "per_method.clip"),
    ({"pruner": {"type": "median", "n_startup_trials": True}}, "pruner.n_startup_trials"),
    ({"launcher": {"type": "local", "parallelism": True}}, "launcher.parallelism"),
    ({"launcher": {"type": "slurm", "profile": "gpu_example", "time": "soon"}}, "launcher.time"),
    ({"launcher": {"type": "slurm", "profile": "local", "nproc": 3}}, "launcher.nproc"),           # 3 ranks on 2-rank nodes
    ({"estimate": {"mfu": 1.5}}, "estimate.mfu"),
    ({"estimate": {"peak_tflops": float("inf")}}, "estimate.peak_tflops"),         # not finite
    ({"estimate": {"peak_tflops": True}}, "estimate.peak_tflops"),
    ({"search": {"lr": "uniform(0, inf)"}, "trials": 4}, "search.lr"),
])
def test_bad_values_raise_a_config_error_naming_the_key(tmp_path, fields, key):
    from scaling.validate import ConfigError

    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, **fields), check_storage=False)
    assert err.value.field == key, str(err.value)
    assert isinstance(err.value, ConfigError)


def test_trial_overrides_keep_strings_strings_and_write_tuples_as_lists(tmp_path):
    spec = load_spec(spec_file(tmp_path), check_storage=False)
    assert "data.path='true'" in spec.overrides({"data.path": "true"})
    assert "dino.global_scale=[0.5, 1.0]" in spec.overrides({"dino.global_scale": (0.5, 1.0)})


def test_grid_blocks_are_joined_without_duplicates(tmp_path):
    spec = load_spec(spec_file(tmp_path, grid=[{"method": ["vatt", "dino"], "global_batch": [8, 16]},
                                               {"method": ["vatt"], "drop_rate": [0.5]},
                                               {"method": ["vatt"], "global_batch": [8]}]))
    assert spec.trials == len(spec.grid) == 5
    assert {"method": "vatt", "drop_rate": 0.5} in spec.grid
    assert len({point_key(p) for p in spec.grid}) == 5


def test_trial_overrides_apply_fixed_then_per_method_then_the_point(tmp_path):
    spec = load_spec(spec_file(tmp_path, per_method={"dino": {"lr": 1e-4}}, fixed={**FIXED, "lr": 5e-4}))
    assert spec.run_config({"method": "dino"}).lr == pytest.approx(1e-4)
    assert spec.run_config({"method": "vatt"}).lr == pytest.approx(5e-4)
    assert spec.run_config({"method": "vatt"}).steps == 4


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_specs_are_valid_and_plan(path, tmp_path):
    from sweeps.commands import plan

    spec = load_spec(path, check_storage=False)
    rows = plan(spec)
    assert rows and all(r["flops"] > 0 and r["gpu_hours"] > 0 for r in rows)


def test_the_study_specs_ship():
    assert {"batch_sensitivity", "model_scaling", "droptoken", "lr_tune", "demo", "demo_remedies"} <= {
        p.stem for p in SPECS.glob("*.yaml")}
    assert Path(SPECS / "lr_tune.yaml").read_text().count("loguniform") >= 1


def test_the_demo_spec_is_the_study_the_demo_promises():
    """sweeps/demo.yaml: both methods on the same backbone and clips, >= 3 global batches with >= 2
    seeds each, >= 2 model sizes, DropToken 0 and 0.5 for VATT, the same samples per run, no
    gradient accumulation for VATT (a VATT run's batch is its contrastive batch), two micro-steps
    for DINO, whose runs measure the gradient-noise scale, and plain DINO beside DINO+KoLeo at the
    largest batch."""
    spec = load_spec(SPECS / "demo.yaml", check_storage=False)
    cfgs = [spec.run_config(p) for p in spec.grid]
    assert {c.method for c in cfgs} == {"vatt", "dino"}
    assert len({c.total_samples for c in cfgs}) == 1
    for field in ("frames", "resolution", "difficulty", "train_size", "eval_size", "seed"):
        assert len({getattr(c.data, field) for c in cfgs}) == 1, field
    assert all(c.world_size == 1 for c in cfgs)
    assert all(c.accumulation == 1 and not c.gns.every_steps for c in cfgs if c.method == "vatt")
    assert all(c.accumulation == 2 and c.gns.every_steps == 10 for c in cfgs if c.method == "dino")
    nano = [c for c in cfgs if c.size == "nano" and c.drop_rate == 0]
    batches = {c.global_batch for c in nano}
    assert len(batches) >= 3
    for method in ("vatt", "dino"):
        for b in batches:
            assert len({c.seed for c in nano if c.method == method and c.global_batch == b}) >= 2, (method, b)
        assert len({c.size for c in cfgs if c.method == method}) >= 2
    assert {c.drop_rate for c in cfgs if c.method == "vatt"} >= {0.0, 0.5}
    # The DINO arm is DINO+KoLeo at every point; plain DINO runs once at the largest batch as the
    # reference the report shows beside it (the two are separate arms in the analysis).
    koleo = [c for c in nano if c.method == "dino" and c.dino.koleo_weight > 0]
    assert all(len({c.seed for c in koleo if c.global_batch == b}) >= 2 for b in batches)
    plain = [c for c in cfgs if c.method == "dino" and c.dino.koleo_weight == 0]
    assert [(c.size, c.global_batch) for c in plain] == [("nano", max(batches))]


def _arm(cfg) -> str:
    from analysis.runs import arm

    npp = (cfg.micro_batch * (cfg.accumulation if cfg.vatt.negatives == "cached" else 1) * cfg.world_size - 1
           if cfg.method == "vatt" else None)
    return arm({"method": cfg.method, "global_batch": cfg.global_batch,
                "vatt": {"loss": cfg.vatt.loss, "negatives": cfg.vatt.negatives},
                "dino": {"koleo_weight": cfg.dino.koleo_weight}}, npp)


def test_the_batch_sensitivity_spec_runs_every_arm_at_every_batch_with_three_seeds():
    """sweeps/batch_sensitivity.yaml: vatt x loss x negatives, simclr and dino, each at the same six
    global batches with 3 seeds; GradCache arms at a fixed micro-batch (their memory stays flat)."""
    spec = load_spec(SPECS / "batch_sensitivity.yaml", check_storage=False)
    cfgs = [spec.run_config(p) for p in spec.grid]
    arms = {}
    for c in cfgs:
        arms.setdefault(_arm(c), set()).add((c.global_batch, c.seed))
    expected = {f"vatt{loss}{neg}" for loss in ("", "+asymmetric", "+sigmoid") for neg in ("", "+cached")}
    assert set(arms) == expected | {"simclr", "dino"}
    batches = {c.global_batch for c in cfgs}
    assert len(batches) == 6 and all(v == {(b, s) for b in batches for s in (0, 1, 2)} for v in arms.values())
    assert {c.micro_batch for c in cfgs if c.vatt.negatives == "cached" and c.method == "vatt"} == {8}
    assert len({c.total_samples for c in cfgs}) == 1


def test_the_remedies_demo_spec_is_the_study_it_promises():
    """sweeps/demo_remedies.yaml: the 144-class clips; nce, sigmoid and simclr at two batches,
    GradCache with micro-batch 8 at the larger (63 negatives at the memory of 8), plain DINO,
    3 seeds each, equal samples, on one CPU machine's local executor."""
    spec = load_spec(SPECS / "demo_remedies.yaml", check_storage=False)
    cfgs = [spec.run_config(p) for p in spec.grid]
    assert {c.data.num_classes for c in cfgs} == {144} and len({c.total_samples for c in cfgs}) == 1
    arms = {}
    for c in cfgs:
        arms.setdefault(_arm(c), set()).add((c.global_batch, c.seed))
    assert arms["vatt"] == arms["vatt+sigmoid"] == arms["simclr"] == {(b, s) for b in (16, 64) for s in (0, 1, 2)}
    assert arms["vatt+cached"] == {(64, s) for s in (0, 1, 2)} and arms["dino"] == {(64, s) for s in (0, 1, 2)}
    cached = [c for c in cfgs if c.vatt.negatives == "cached" and c.method == "vatt"]
    assert all(c.micro_batch == 8 and c.accumulation == 8 for c in cached)
    assert all(c.dino.koleo_weight == 0 for c in cfgs if c.method == "dino")
    assert spec.launcher["type"] == "local"
