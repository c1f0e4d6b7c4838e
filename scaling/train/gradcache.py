"""vatt.negatives=cached: GradCache (Gao et al. 2021), contrastive negatives over the whole optimizer
batch at the activation memory of one micro-batch.

Pass 1 embeds every micro-batch of the optimizer step, all but the last without a graph. The loss
over the whole optimizer batch (all micro-batches, all ranks: negatives per positive =
global_batch - 1) is then computed on those embeddings as leaves, and its gradient with respect to
them is kept. Pass 2 backpropagates the kept gradient through each micro-batch (the surrogate
sum(embedding * gradient)), so the parameters receive exactly the gradient of the optimizer-batch
loss: first through the last micro-batch's graph, which pass 1 kept, then through each other
micro-batch, rerun with a graph. Keeping the last graph adds no activation memory but the
loss's own (pass 2 holds one micro-batch's graph at a time anyway) and saves one forward of the
n: the extra cost is n - 1 forwards, not n, and with one micro-batch a cached step is an ordinary
one.

Pass 2 replays pass 1's randomness exactly. Each micro-step of pass 1 reseeds torch and the
augmentation generator from (seed, global micro-step) and draws inside `draws.micro_step`, as the
ordinary path does. Pass 2 does not augment again: it reuses pass 1's augmented inputs (the same
crops, flips and jitter by construction; they cost the device memory of the optimizer batch's
inputs, small beside one micro-batch's activations) and restores torch's RNG state as pass 1 had it
after augmenting, so DropToken, stochastic depth and dropout draw the same values twice.

The FAC heads' synchronised BatchNorms normalise each micro-batch (over all ranks) in both passes,
so the embeddings of the two passes are the same; their batch statistics are those of the
micro-batch x world, not of the optimizer batch (the one way a cached step differs from one big
micro-batch). Pass 1 updates their running statistics once per micro-batch, in order, as without
caching; the values it leaves are restored after pass 2's reruns.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from scaling import draws
from scaling.distributed import SyncBatchNorm1d

# Per-step scalars of the forward (vatt.loss=sigmoid's scale and bias): one gradient for the step.
_SCALARS = ("va_log_scale", "va_bias", "vt_log_scale", "vt_bias")


def _norm_buffers(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(buf, buf.detach().clone()) for m in module.modules() if isinstance(m, SyncBatchNorm1d)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]


def cached_micro_steps(engine, objective, batches: list[dict[str, torch.Tensor]],
                       seed: Callable[[int], None], span: draws.Span, generator: torch.Generator | None,
                       on_boundary: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, Any], Any]:
    """One optimizer step's forward and backward passes under GradCache, ending with the engine's
    micro-steps (engine.step() after each backward; `on_boundary()` before the last, for clipping
    or measuring). `seed(m)` seeds micro-step m of the step. Returns the optimizer-batch loss, its
    metrics and what `on_boundary` returned."""
    module = getattr(engine, "module", engine)
    kept, outs, groups, replays = _embed(engine, objective, batches, seed, span, generator)
    # Pass 1 updated the running statistics once per micro-batch, in order; pass 2 must not again.
    saved = _norm_buffers(module)
    keys = [k for k in outs[0] if k not in _SCALARS]
    leaves = {k: torch.cat([o[k] for o in outs]).requires_grad_() for k in keys}
    scalars = {k: outs[0][k].detach().clone().requires_grad_() for k in _SCALARS if k in outs[0]}
    group = None if groups[0] is None else torch.cat(groups)
    with torch.enable_grad():
        loss, metrics = objective.loss_from({**leaves, **scalars}, group)
        loss.backward()
    grads = {k: v.grad.split([o[k].shape[0] for o in outs]) for k, v in leaves.items()}
    measured, last = None, len(batches) - 1
    # The last micro-batch first, through the graph pass 1 kept; then the others, rerun with one.
    for m in (last, *range(last)):
        with draws.micro_step(span):
            if m == last:
                out = kept
            else:
                inputs, state = replays[m]
                _set_rng_state(state)
                out, _ = objective.forward(engine, inputs)
            surrogate = sum((out[k] * grads[k][m]).sum() for k in keys)
            # The scalars' gradient once per step, shared out over its micro-batches.
            surrogate = surrogate + sum((out[k] * scalars[k].grad).sum() for k in scalars) / len(batches)
            # The kept gradient is already that of the whole step's loss: no 1/accumulation scaling.
            engine.backward(surrogate, scale_wrt_gas=False)
        if engine.is_gradient_accumulation_boundary():
            measured = on_boundary()
        engine.step()
    for buf, value in saved:
        buf.copy_(value)
    return loss.detach(), metrics, measured


def _embed(engine, objective, batches, seed, span, generator):
    """Pass 1: every micro-batch's embeddings (detached) and same-video groups, in order. All but the
    last run without a graph and keep their augmented inputs and torch's RNG state after augmenting,
    for pass 2 to replay; the last keeps its graph (returned first), so pass 2 need not rerun it."""
    kept, outs, groups, replays = None, [], [], []
    for m, batch in enumerate(batches):
        last = m == len(batches) - 1
        seed(m)
        with torch.set_grad_enabled(last), draws.micro_step(span):
            inputs = objective.inputs(engine, batch, generator)
            if not last:
                replays.append((inputs, _rng_state()))
            out, group = objective.forward(engine, inputs)
        if last:
            kept, out = out, {k: v.detach() for k, v in out.items()}
        outs.append(out)
        groups.append(group)
    return kept, outs, groups, replays


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """torch's RNG state: the CPU generator's and every initialised CUDA device's."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
