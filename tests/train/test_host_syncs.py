"""The host-sync budget: during steady-state optimizer steps (nothing logged), the calls that would
block the host on a GPU stay within a small per-step budget, DeepSpeed's own included.

Counted, as a GPU would feel them: reads of a tensor's value (`Tensor.item`, `__bool__`,
`__float__`, `__int__`, `tolist`, `cpu`), and blocking host-to-device copies (`Tensor.to`/`cuda`
naming a device without non_blocking=True that do copy, `torch.tensor`/`as_tensor` with a device).
On this CPU every tensor is a host tensor, so the count is conservative: it also counts reads that a
GPU would serve without waiting. Data loading is not counted (on a GPU run it happens in worker processes).
The marginal count per step is the difference of two runs that differ only in their length.
"""
import os
import sys
from collections import Counter

import pytest
import torch
from clitools import TINY

# At most this many blocking calls per optimizer step when not logging. Ours: one (the step's
# finiteness flags and rank 0's deadline, reduced and read together). DeepSpeed's fp32 stage-0
# global-norm clip adds two small host-to-device copies (the clip threshold and its 1.0 cap).
BUDGET = 4
READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu")
DATA = (f"{os.sep}torch{os.sep}utils{os.sep}data{os.sep}", f"{os.sep}scaling{os.sep}data{os.sep}loader.py")


def _in_data_loading() -> bool:
    frame = sys._getframe(2)
    while frame:
        if any(part in frame.f_code.co_filename for part in DATA):
            return True
        frame = frame.f_back
    return False


def _caller() -> str:
    """file:line of the first frame outside torch and these wrappers: who made the call."""
    frame = sys._getframe(2)
    while frame and (f"{os.sep}torch{os.sep}" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame else "?"


def _names_device(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) or (isinstance(a, int) and not isinstance(a, bool))
               for a in args[:1])


@pytest.fixture
def counted(monkeypatch):
    """Counter of blocking calls by kind and caller, while the fixture is active."""
    calls: Counter = Counter()

    def count(kind: str) -> None:
        if not _in_data_loading():
            calls[(kind, _caller())] += 1

    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name, **kwargs):
            count(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    for name in ("to", "cuda"):
        original = getattr(torch.Tensor, name)

        def copy(self, *args, _original=original, _name=name, **kwargs):
            out = _original(self, *args, **kwargs)
            blocking = not kwargs.get("non_blocking", False) and not any(a is True for a in args[1:])
            # A tensor already where it is asked to go comes back as itself: no copy, no wait.
            if blocking and out is not self and (_name == "cuda" or _names_device(args, kwargs)):
                count(f"{_name}(device)")
            return out

        monkeypatch.setattr(torch.Tensor, name, copy)
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def factory(*args, _original=original, _name=name, **kwargs):
            if kwargs.get("device") is not None:
                count(f"torch.{_name}(device=)")
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, factory)
    return calls


def _run(tmp_path, name, steps, overrides, calls):
    from scaling.config import RunConfig
    from scaling.train.loop import train

    cfg = RunConfig.load(None, [*TINY, f"steps={steps}", "log_every=1000", "eval.random_init=false",
                                "eval.linear_probe=false", "data.train_size=256", *overrides])
    calls.clear()
    summary = train(cfg, tmp_path / name)
    assert summary["end_reason"] == "completed"
    return Counter(calls)


@pytest.mark.parametrize("method, extra", [
    ("vatt", []),
    ("dino", []),                              # DINO's default clip (3.0): DeepSpeed's clip runs
    ("dino", ["dino.input=image", "dino.patch_size=16", "data.resolution=32"]),
])
def test_steady_state_steps_stay_within_the_host_sync_budget(tmp_path, process_group_env, counted, method, extra):
    overrides = [f"method={method}", "zero_stage=0", "precision=fp32", *extra]
    short = _run(tmp_path, "short", 3, overrides, counted)
    long = _run(tmp_path, "long", 7, overrides, counted)
    marginal = long - short  # the same set-up, first step, last (logged) step, save and evaluation
    per_step = sum(marginal.values()) / 4
    detail = "\n".join(f"{n / 4:5.2f}  {kind:<24} {where}" for (kind, where), n in marginal.most_common())
    assert per_step <= BUDGET, f"{per_step} blocking calls per optimizer step (budget {BUDGET}):\n{detail}"
    # the budget is spent where it says: one read of the step's flags
    assert marginal[("tolist", "distributed.py:" + str(_flag_read_line()))] == 4, detail


def _flag_read_line() -> int:
    import inspect

    from scaling import distributed

    lines, start = inspect.getsourcelines(distributed.all_agree)
    return start + next(i for i, line in enumerate(lines) if ".tolist()" in line)
