"""train() ends the process group it made, on success and after a failure (a live gloo group at
interpreter exit can abort a rank whose work is done), and leaves a caller's own group alive."""
import pytest
import torch.distributed as dist
from clitools import TINY

from scaling.config import RunConfig

OVERRIDES = [*TINY, "steps=2", "eval.random_init=false", "eval.linear_probe=false", "eval.every_steps=2"]


@pytest.fixture
def no_group(process_group_env):
    """Start without a group, whatever an earlier test in this process left."""
    from scaling.train.engine import end_process_group

    if dist.is_initialized():
        end_process_group()
    yield
    assert not dist.is_initialized() or dist.get_world_size() == 1


def test_a_completed_run_ends_its_group_and_a_second_run_makes_its_own(tmp_path, no_group):
    from scaling.train.loop import train

    cfg = RunConfig.load(None, OVERRIDES)
    assert train(cfg, tmp_path / "a")["end_reason"] == "completed"
    assert not dist.is_initialized()
    assert train(cfg, tmp_path / "b")["end_reason"] == "completed"
    assert not dist.is_initialized()


def test_a_finished_run_dir_returns_its_summary_and_ends_the_group(tmp_path, no_group):
    from scaling.train.loop import train

    cfg = RunConfig.load(None, OVERRIDES)
    first = train(cfg, tmp_path / "a")
    assert train(cfg, tmp_path / "a") == first  # nothing to do
    assert not dist.is_initialized()


def test_a_raising_run_ends_its_group_and_records_the_error(tmp_path, no_group):
    from scaling.train import rundir as rd
    from scaling.train.loop import train

    def on_eval(step, metrics):
        raise RuntimeError("the evaluation hook failed")

    cfg = RunConfig.load(None, [*OVERRIDES, "eval.every_steps=1"])  # step 1 evaluates and calls the hook
    with pytest.raises(RuntimeError, match="the evaluation hook failed"):
        train(cfg, tmp_path / "a", on_eval=on_eval)
    assert not dist.is_initialized()
    assert rd.read_summary(tmp_path / "a")["end_reason"].startswith("error: RuntimeError")


def test_a_callers_group_outlives_the_runs_inside_it(tmp_path, no_group):
    from scaling.train.engine import joined_process_group
    from scaling.train.loop import train

    cfg = RunConfig.load(None, OVERRIDES)
    with joined_process_group() as (rank, world):
        assert (rank, world) == (0, 1)
        train(cfg, tmp_path / "a")
        assert dist.is_initialized()
        group = dist.group.WORLD
        train(cfg, tmp_path / "b")
        assert dist.group.WORLD is group  # the same group served both runs
    assert not dist.is_initialized()


def test_a_port_the_run_chose_for_itself_is_not_left_for_the_next(tmp_path, no_group, monkeypatch):
    import os

    from scaling.train.loop import train

    monkeypatch.delenv("MASTER_PORT")
    cfg = RunConfig.load(None, OVERRIDES)
    train(cfg, tmp_path / "a")
    assert "MASTER_PORT" not in os.environ  # the next run chooses its own
    train(cfg, tmp_path / "b")
    assert "MASTER_PORT" not in os.environ
