"""Every tensor collective lives in scaling/distributed.py, on the device its backend serves: the
structural rule, the device rule under NCCL (CUDA queries patched), and the real training loop on 2
gloo ranks with torch.distributed's collectives wrapped so each call must have asked for its device."""
import ast
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from clitools import TINY

from scaling import distributed

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scaling", "slurm", "sweeps", "analysis", "benchmarks")
COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "all_gather_single",
               "all_gather_object", "broadcast_object_list", "gather", "gather_object", "scatter",
               "scatter_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "barrier", "send", "recv", "isend", "irecv", "monitored_barrier"}
HOME = ROOT / "scaling" / "distributed.py"


def _collective_calls(path: Path) -> list[str]:
    """`dist.X(...)` / `torch.distributed.X(...)` calls and `from torch.distributed import X` of a file."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {"torch.distributed"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            found += [f"{path}:{node.lineno}: imports {a.name}" for a in node.names if a.name in COLLECTIVES]
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES
                and ast.unparse(node.func.value) in aliases):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node.func)}")
    return found


def test_only_scaling_distributed_calls_torch_collectives():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert HOME in files and _collective_calls(HOME)  # the rule's own home does call them
    offenders = [c for p in files if p != HOME for c in _collective_calls(p)]
    assert not offenders, "collectives outside scaling/distributed.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("backend, gpus, local_rank, expected", [
    ("nccl", 8, "3", "cuda:3"),
    ("nccl", 1, "3", "cuda:0"),          # each task sees only its own GPU
    ("cuda:nccl", 4, "1", "cuda:1"),
    ("gloo", 8, "3", "cpu"),
    ("cpu:gloo,cuda:nccl", 8, "3", "cpu"),
])
def test_collective_device_is_the_rank_gpu_when_the_backend_serves_only_cuda(monkeypatch, backend, gpus,
                                                                            local_rank, expected):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert distributed.collective_device() == torch.device(expected)


@pytest.mark.parametrize("backend, expected", [
    ("nccl", {"device_ids": [2]}),       # NCCL's barrier is told its GPU, else it guesses and warns
    ("gloo", {}),
    ("cpu:gloo,cuda:nccl", {}),
])
def test_barrier_names_the_rank_gpu_only_under_a_cuda_only_backend(monkeypatch, backend, expected):
    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(dist, "barrier", lambda **kwargs: seen.append(kwargs))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    distributed.barrier()
    assert seen == [expected]


def test_init_distributed_selects_the_visible_gpu_before_the_process_group(monkeypatch):
    """set_device(LOCAL_RANK) fails where a task sees one GPU; the ordinal is LOCAL_RANK % count."""
    import deepspeed

    from scaling.train import engine

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls and calls[-1][0] == "init"))
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend: calls.append(("init", dist_backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 5)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    for key, value in {"LOCAL_RANK": "5", "RANK": "5", "WORLD_SIZE": "8", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert engine.init_distributed() == (5, 8)
    assert calls == [("set_device", 0), ("init", "nccl")]


# ----------------------------------------------------------------------------- the loop on 2 ranks
WATCHED = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "all_gather_single",
           "all_gather_object", "broadcast_object_list", "reduce_scatter_tensor", "barrier")


def _caller() -> str:
    """The first frame outside torch itself: who asked for the collective."""
    frame = sys._getframe(2)
    while frame and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
        frame = frame.f_back
    return frame.f_code.co_filename if frame else "?"


def _watch(log: dict) -> None:
    """Wrap torch.distributed's collectives and scaling.distributed.collective_device in this process."""
    asked = {"device": None}
    ask = distributed.collective_device

    def asking():
        asked["device"] = ask()
        return asked["device"]

    distributed.collective_device = asking

    def wrap(name, fn):
        def call(*args, **kwargs):
            who = _caller()
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]
            if f"{os.sep}deepspeed{os.sep}" in who:
                log["deepspeed"] += 1  # DeepSpeed's own, on the engine's device
            elif who != str(HOME):
                log["violations"].append(f"{name} called from {who}")
            elif name != "barrier":
                if asked["device"] is None:
                    log["violations"].append(f"{name} without asking collective_device()")
                elif any(t.device != asked["device"] for t in tensors):
                    log["violations"].append(f"{name} on {[str(t.device) for t in tensors]}, asked {asked['device']}")
                log["ours"][name] = log["ours"].get(name, 0) + 1
                asked["device"] = None  # every collective must ask again
            return fn(*args, **kwargs)
        return call

    for name in WATCHED:
        if hasattr(dist, name):
            setattr(dist, name, wrap(name, getattr(dist, name)))


def _rank(rank: int, port: int, run_dir: str, out: str, overrides: list[str]) -> None:
    import time

    from scaling.config import RunConfig
    from scaling.train.engine import joined_process_group
    from scaling.train.loop import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    log = {"violations": [], "ours": {}, "deepspeed": 0}
    _watch(log)
    cfg = RunConfig.load(None, overrides)
    # A deadline already past: the run stops after its first step with a checkpoint (broadcast of the
    # deadline, the step's flags, a save); the second call resumes it (the checkpoint agreement) and
    # finishes (evaluation's gathers). Both run in this rank's one group: a run ends only a group it
    # made, and a second rendezvous on the same port could meet the first one's store.
    with joined_process_group():
        first = train(cfg, run_dir, deadline=time.time() - 1)
        second = train(cfg, run_dir)
    if rank == 0:
        log["end_reasons"] = [first["end_reason"], second["end_reason"]]
    Path(f"{out}.{rank}").write_text(json.dumps(log))


@pytest.mark.parametrize("method", ["vatt", "dino"])
def test_training_loop_collectives_each_ask_scaling_distributed_for_their_device(tmp_path, method):
    from scaling.train.engine import free_port

    overrides = [*TINY, f"method={method}", "world_size=2", "steps=3", "zero_stage=2", "eval.linear_probe=false",
                 "eval.random_init=true"]
    mp.spawn(_rank, args=(free_port(), str(tmp_path / "run"), str(tmp_path / "log"), overrides), nprocs=2, join=True)
    logs = [json.loads((tmp_path / f"log.{r}").read_text()) for r in range(2)]
    assert logs[0]["end_reasons"] == ["deadline", "completed"]
    for log in logs:
        assert log["violations"] == []
        # set-up (rank 0's deadline), agreements and flags, evaluation's tensor gathers
        assert log["ours"].get("broadcast", 0) >= 2 and log["ours"].get("all_reduce", 0) >= 3
        assert log["ours"].get("all_gather_single", 0) + log["ours"].get("all_gather_into_tensor", 0) > 0
        assert "all_gather_object" not in log["ours"]
        assert log["deepspeed"] > 0  # the wrapper saw the engine's own traffic too
