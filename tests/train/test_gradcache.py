"""vatt.negatives=cached (GradCache) on real DeepSpeed engines, 1 and 2 gloo ranks: the parameter
gradient of a cached step equals the gradient of the optimizer-batch loss computed with a full
graph, with every random draw on (so pass 2 must replay pass 1's DropToken, stochastic depth,
dropout and augmentation); and, with the randomness and the heads' batch statistics out of the way,
that of one big micro-batch without accumulation. The heads' BatchNorm running statistics end as
the reference's: updated once per micro-batch, in order."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from scaling.config import RunConfig

MICRO, STEPS_PER = 4, 2  # micro-batch per rank, micro-batches per optimizer step
BASE = ["method=vatt", "steps=1", "size=nano", "data.train_size=64", "data.captions=2", "data.max_words=8",
        "data.vocab_size=1000", "eval.linear_probe=false"]
RANDOM = ["drop_rate=0.5", "drop_path=0.1", "dropout=0.1"]


def _batch(indices):
    from scaling.data.synthetic import SyntheticClips

    return SyntheticClips("train", 64, captions=2, max_words=8, vocab_size=1000).__getitems__(indices)


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _norm_stats(module):
    from scaling.distributed import SyncBatchNorm1d

    return {f"{n}.{b}": getattr(m, b).detach().clone().double() for n, m in module.named_modules()
            if isinstance(m, SyncBatchNorm1d) for b in ("running_mean", "running_var", "num_batches_tracked")}


def _reference_grads(objective, module, batches, seed, span, generator, world):
    """The optimizer-batch loss with a full graph: every micro-batch embedded (seeded as the loop
    seeds it), one loss over all of them, backward; averaged over ranks as the engine averages."""
    from scaling import draws
    from scaling.distributed import all_reduce_

    outs, groups = [], []
    for m, batch in enumerate(batches):
        seed(m)
        with draws.micro_step(span):
            out, group = objective.embed(module, batch, generator)
        outs.append(out)
        groups.append(group)
    joined = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    loss, _ = objective.loss_from(joined, None)
    loss.backward()
    return {n: all_reduce_(g) / world for n, g in _grads(module).items()}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from scaling.train.engine import joined_process_group

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with joined_process_group():
        results = {case: _case(case, rank, world) for case in ("replay", "big_batch")}
        Path(f"{out}.{rank}").write_text(json.dumps(results))


def _case(case: str, rank: int, world: int) -> dict:
    import deepspeed

    from scaling import draws
    from scaling.data.windows import mix_seed
    from scaling.distributed import SyncBatchNorm1d
    from scaling.models import build_model
    from scaling.objectives import build_objective
    from scaling.train.engine import build_ds_config
    from scaling.train.gradcache import cached_micro_steps

    random = RANDOM if case == "replay" else ["dropout=0.0"]  # (VATT's default dropout is 0.1)
    cfg = RunConfig.load(None, [*BASE, *random, f"world_size={world}", f"global_batch={MICRO * STEPS_PER * world}",
                                f"micro_batch={MICRO}", "vatt.negatives=cached"])
    torch.manual_seed(0)
    model = build_model(cfg)
    reference = copy.deepcopy(model)
    objective = build_objective(cfg, world)
    if case == "big_batch":  # no augmentation, batch statistics from the running ones
        objective.augment = lambda video, generator: [video.float() / 255]
        for module in (model, reference):
            for m in module.modules():
                if isinstance(m, SyncBatchNorm1d):
                    m.eval()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                      config=build_ds_config(cfg, world))
    span = draws.span_of(MICRO, rank, world)
    generator = torch.Generator()

    def seed(m):
        torch.manual_seed(mix_seed(cfg.seed, m, 0))
        generator.manual_seed(mix_seed(cfg.seed, m, 1))

    batches = [_batch([m * MICRO * world + rank + world * i for i in range(MICRO)]) for m in range(STEPS_PER)]
    got = {}
    loss, metrics, _ = cached_micro_steps(engine, objective, batches, seed, span, generator,
                                          lambda: got.update(_grads(engine.module)))
    if case == "replay":
        want = _reference_grads(objective, reference, batches, seed, span, generator, world)
    else:  # one micro-batch of MICRO x STEPS_PER clips per rank, no accumulation, negatives=batch
        big = RunConfig.load(None, [*BASE, f"world_size={world}", f"global_batch={MICRO * STEPS_PER * world}",
                                    f"micro_batch={MICRO * STEPS_PER}", "dropout=0.0"])
        big_objective = build_objective(big, world)
        big_objective.augment = objective.augment
        rows = [rank + world * i for i in range(MICRO * STEPS_PER)]
        want = _reference_grads(big_objective, reference, [_batch(rows)], seed,
                                draws.span_of(MICRO * STEPS_PER, rank, world), generator, world)
    # The heads' running statistics: updated once per micro-batch, in order, as the reference did.
    stats, want_stats = _norm_stats(engine.module), _norm_stats(reference)
    return {"names": sorted(want), "missing": sorted(set(want) ^ set(got)), "stats": sorted(stats),
            "stats_err": max(float((stats[n] - want_stats[n]).abs().max()) for n in want_stats),
            "max_err": max(float((got[n] - want[n]).abs().max()) for n in want),
            "max_grad": max(float(want[n].abs().max()) for n in want),
            "negatives": metrics["negatives_per_positive"], "loss": float(loss)}


@pytest.mark.parametrize("world", [1, 2])
def test_a_cached_step_gives_the_gradient_of_the_optimizer_batch_loss(tmp_path, world):
    from scaling.train.engine import free_port

    mp.spawn(_rank, args=(world, free_port(), str(tmp_path / "out")), nprocs=world, join=True)
    for rank in range(world):
        results = json.loads((tmp_path / f"out.{rank}").read_text())
        for case, r in results.items():
            assert r["names"] and not r["missing"], (case, r["missing"])
            # fp32 noise: the two paths sum the same terms in other orders
            assert r["max_err"] <= 1e-5 * max(1.0, r["max_grad"]), (case, r)
            assert r["stats"] and r["stats_err"] <= 1e-6, (case, r["stats_err"])
            assert r["negatives"] == MICRO * STEPS_PER * world - 1  # the optimizer batch, not the micro-batch
