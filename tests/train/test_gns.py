"""The online gradient-noise scale (scaling.train.gns) against the exact one.

A small MLP regression on a fixed population of N samples, where torch.func gives every sample's
gradient: the exact |G|^2, tr(Sigma) and B_simple of the population. Real DeepSpeed engines (ZeRO-0
and ZeRO-2, and ZeRO-3) on 1 and 2 gloo ranks, with lr 0 so the parameters and hence the truth stay
fixed, draw micro-batches with replacement. Per step, the hooked small-batch and the reduced
big-batch squared norms equal the exact ones of the drawn samples (a deterministic check); over
the steps, the time-averaged B_simple agrees with the exact value within 4 of its stated standard
errors, which are small enough for the check to fail on a wrong estimator."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from clitools import TINY

from scaling.config import RunConfig
from scaling.train.gns import estimates, ratio_of_means

N, DIM, MICRO, GLOBAL, STEPS = 512, 6, 4, 16, 300
STAGES = (0, 2, 3)


def _population() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, DIM, generator=g)
    y = torch.sin(x @ torch.randn(DIM, generator=g)) + 0.3 * torch.randn(N, generator=g)
    return x, y


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x, y):
        return (self.net(x).squeeze(-1) - y).square().mean()


def _indices(step: int, rank: int, micro: int) -> torch.Tensor:
    return torch.randint(N, (MICRO,), generator=torch.Generator().manual_seed(10_000 * step + 100 * rank + micro))


def per_sample_grads(model: MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every sample's flattened gradient, (samples, parameters)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return functional_call(model, p, (xi[None], yi[None]))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1).double()


def exact_b_simple() -> tuple[float, float, float]:
    x, y = _population()
    g = per_sample_grads(MLP(), x, y)
    mean = g.mean(0)
    grad_sq, trace = float(mean.square().sum()), float((g - mean).square().sum(1).mean())
    return grad_sq, trace, trace / grad_sq


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import deepspeed

    from scaling.train.engine import build_ds_config, grad_norm_before_step, joined_process_group
    from scaling.train.gns import GradientNoiseScale

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with joined_process_group():
        x, y = _population()
        results = {}
        for stage in STAGES:
            cfg = RunConfig.load(None, [*TINY, f"zero_stage={stage}", "precision=fp32", f"world_size={world}",
                                        f"micro_batch={MICRO}", f"global_batch={GLOBAL}"])
            model = MLP()
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                              config=build_ds_config(cfg, world, device="cpu"))
            gns = GradientNoiseScale(engine.module, MICRO, GLOBAL, cfg.accumulation, ema=0.99)
            first = None
            for step in range(STEPS):
                gns.arm()
                measured = None
                for m in range(cfg.accumulation):
                    i = _indices(step, rank, m)
                    engine.backward(engine(x[i], y[i]))
                    if engine.is_gradient_accumulation_boundary():
                        measured = grad_norm_before_step(engine)
                    engine.step()
                norm = engine.get_global_grad_norm() if measured is None else measured
                logged = gns.measure(norm)
                if first is None:
                    first = {"small_sq": gns.last[0], "big_sq": gns.last[1], **logged}
            results[stage] = {"first": first, "summary": gns.summary(), "accumulation": cfg.accumulation}
        Path(f"{out}.{rank}").write_text(json.dumps(results))


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks"])
def online(request, tmp_path_factory):
    from scaling.train.engine import free_port

    world = request.param
    out = tmp_path_factory.mktemp("gns") / "out"
    mp.spawn(_rank, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return world, [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]


def _exact_first_step(world: int) -> tuple[float, float]:
    """Step 0's small-batch mean squared norm and big-batch squared norm, from the drawn samples."""
    x, y = _population()
    g = per_sample_grads(MLP(), x, y)
    accumulation = GLOBAL // (MICRO * world)
    smalls = [g[_indices(0, r, m)].mean(0) for r in range(world) for m in range(accumulation)]
    big = torch.stack(smalls).mean(0)
    return float(torch.stack([s.square().sum() for s in smalls]).mean()), float(big.square().sum())


@pytest.mark.parametrize("stage", STAGES)
def test_the_hooks_see_each_micro_steps_local_gradient(online, stage):
    world, results = online
    small_sq, big_sq = _exact_first_step(world)
    for rank_results in results:
        first = rank_results[str(stage)]["first"]
        assert first["small_sq"] == pytest.approx(small_sq, rel=1e-5)
        assert first["big_sq"] == pytest.approx(big_sq, rel=1e-5)
        grad_sq, trace = estimates(small_sq, big_sq, MICRO, GLOBAL)
        assert first["gns/grad_sq"] == pytest.approx(grad_sq, rel=1e-4)  # the EMA's first value is the estimate
        assert first["gns/trace_cov"] == pytest.approx(trace, rel=1e-4)


@pytest.mark.parametrize("stage", STAGES)
def test_the_online_b_simple_agrees_with_the_exact_one(online, stage):
    _, results = online
    _, _, exact = exact_b_simple()
    assert 2 < exact < 200  # noise and signal both matter at batches of 4 and 16
    summaries = [r[str(stage)]["summary"] for r in results]
    assert all(s == summaries[0] for s in summaries)  # every rank measures the same
    s = summaries[0]
    assert s["measurements"] == STEPS and s["b_small"] == MICRO and s["b_big"] == GLOBAL
    assert s["b_simple_mean_se"] < 0.2 * exact  # the check below can fail
    assert abs(s["b_simple_mean"] - exact) < 4 * s["b_simple_mean_se"]
    assert s["b_simple"] > 0


def test_the_estimators_invert_the_expected_norms():
    grad_sq, trace = 2.5, 40.0
    got = estimates(grad_sq + trace / 4, grad_sq + trace / 64, 4, 64)
    assert got == pytest.approx((grad_sq, trace))
    with pytest.raises(ValueError, match="two batch sizes"):
        estimates(1.0, 1.0, 8, 8)


def test_the_ratio_of_means_and_its_standard_error():
    gen = torch.Generator().manual_seed(0)
    s = 30 + 5 * torch.randn(4000, generator=gen, dtype=torch.float64)
    g = 3 + 0.5 * torch.randn(4000, generator=gen, dtype=torch.float64)
    b, se = ratio_of_means(len(s), float(s.sum()), float(g.sum()), float((s * s).sum()), float((g * g).sum()),
                           float((s * g).sum()))
    assert b == pytest.approx(float(s.mean() / g.mean()))
    # The delta method against the bootstrap spread of the ratio.
    draws = torch.randint(4000, (400, 4000), generator=gen)
    boot = (s[draws].mean(1) / g[draws].mean(1)).std().item()
    assert se == pytest.approx(boot, rel=0.15)
    assert math.isnan(ratio_of_means(1, 1.0, 1.0, 1.0, 1.0, 1.0)[1])
