"""clip_mode=per_param clips each parameter's whole, rank-averaged gradient as official DINO does,
at every ZeRO stage: real DeepSpeed engines on 2 gloo ranks, two micro-steps of accumulation, an
SGD step of lr 1 (so the update is the clipped gradient), against a hand computation."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from clitools import TINY

from scaling.config import RunConfig
from scaling.train.engine import build_ds_config

SHAPES = [(7, 5), (5,), (5, 3), (3,), (40,)]
CLIP = 1.0
# Gradient scale per parameter: some norms end above the clip, some below.
SCALES = [1.0, 0.05, 0.8, 0.1, 0.6]
CASES = [(0, "fp32", None), (1, "fp32", None), (2, "fp32", None), (3, "fp32", None), (3, "fp32", 0),
         (0, "bf16", None)]


class Linear(torch.nn.Module):
    """Parameters owned by one module (ZeRO-3 gathers them in its forward); the loss is linear in
    them, so each parameter's gradient is the weight it is given."""

    def __init__(self):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s)) for s in SHAPES])

    def forward(self, weights):
        return sum((w.to(p.dtype) * p).sum() for w, p in zip(weights, self.ps))


def _weights(rank: int, micro: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + micro)
    return [scale * torch.randn(s, generator=g) for s, scale in zip(SHAPES, SCALES)]


def expected_update(world: int, micro_steps: int, dtype=torch.float32) -> tuple[list[torch.Tensor], float]:
    """The hand computation: the mean gradient over ranks and micro-steps, each parameter scaled by
    clip / (norm + 1e-6) where that is below 1; and the global norm before clipping."""
    grads = [torch.zeros(s) for s in SHAPES]
    for r in range(world):
        for m in range(micro_steps):
            for g, w in zip(grads, _weights(r, m)):
                g += w.to(dtype).float() / (world * micro_steps)
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    out = []
    for g in grads:
        coef = CLIP / (g.norm().item() + 1e-6)
        out.append(g * coef if coef < 1 else g)
    return out, total


def _rank(rank: int, port: int, out: str) -> None:
    import deepspeed

    from scaling.train.clipping import clip_per_parameter
    from scaling.train.engine import joined_process_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with joined_process_group():
        results = []
        for stage, precision, persistence in CASES:
            cfg = RunConfig.load(None, [*TINY, f"zero_stage={stage}", f"precision={precision}", "world_size=2",
                                        "micro_batch=2", "clip_mode=per_param", f"clip_grad={CLIP}"])
            ds = build_ds_config(cfg, 2, device="cuda" if precision == "bf16" else "cpu")
            if persistence is not None:
                ds["zero_optimization"]["stage3_param_persistence_threshold"] = persistence
            torch.manual_seed(0)
            model = Linear()
            before = [p.detach().clone() for p in model.ps]
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                              config=ds)
            norm = None
            for m in range(cfg.accumulation):
                engine.backward(engine(_weights(rank, m)))
                if engine.is_gradient_accumulation_boundary():
                    norm = clip_per_parameter(engine, cfg.clip_grad)
                engine.step()
            with deepspeed.zero.GatheredParameters(list(model.ps)):
                updates = [(b - p.detach().float()).tolist() for b, p in zip(before, model.ps)]
            results.append({"case": [stage, precision, persistence], "gradient_clipping": ds["gradient_clipping"],
                            "updates": updates, "norm": float(norm), "optimizer": type(engine.optimizer).__name__})
        Path(f"{out}.{rank}").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    from scaling.train.engine import free_port

    out = tmp_path_factory.mktemp("clip") / "out"
    mp.spawn(_rank, args=(free_port(), str(out)), nprocs=2, join=True)
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"zero{s}-{p}" + ("-partitioned" if t == 0 else "")
                                                           for s, p, t in CASES])
def test_per_parameter_clipping_matches_the_hand_computation(two_rank_results, index):
    stage, precision, _ = CASES[index]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    expected, total = expected_update(2, 2, dtype)
    tol = dict(atol=3e-2, rtol=3e-2) if precision == "bf16" else dict(atol=1e-6, rtol=1e-5)
    clipped = [g.norm().item() for g in expected]
    assert min(clipped) < 0.5 * CLIP and max(clipped) == pytest.approx(CLIP, rel=1e-5)  # both kinds present
    for rank_results in two_rank_results:
        result = rank_results[index]
        assert result["gradient_clipping"] == 0.0  # DeepSpeed's global clip is off
        if precision == "bf16" and stage == 0:
            assert result["optimizer"] == "BF16_Optimizer"
        for got, want in zip(result["updates"], expected):
            torch.testing.assert_close(torch.tensor(got), want, **tol)
        assert result["norm"] == pytest.approx(total, rel=tol["rtol"])


def test_global_mode_leaves_clipping_to_deepspeed():
    cfg = RunConfig.load(None, [*TINY, "clip_mode=global", "clip_grad=3.0"])
    assert build_ds_config(cfg, 1)["gradient_clipping"] == 3.0
    cfg = RunConfig.load(None, [*TINY, "method=dino"])
    assert cfg.clip_mode == "per_param" and build_ds_config(cfg, 1)["gradient_clipping"] == 0.0
