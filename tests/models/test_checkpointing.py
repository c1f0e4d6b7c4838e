"""Activation checkpointing recomputes each block in the backward and changes nothing else: the same
seed gives the same loss and gradients, stochastic depth and DropToken included."""
import pytest
import torch
from clitools import TINY

from scaling.config import RunConfig
from scaling.data.loader import build_dataset, collate_batch
from scaling.models import build_model
from scaling.models.vit import Block, Transformer
from scaling.objectives import build_objective

CONFIGS = {
    "vatt": ["method=vatt"],
    "vatt_shared": ["method=vatt", "vatt.shared_backbone=true"],
    "dino_image": ["method=dino", "dino.input=image", "drop_rate=0.0"],  # the image ViT never drops
    "dino_video": ["method=dino", "dino.input=video"],
}


def tiny(name: str, checkpointing: bool) -> RunConfig:
    return RunConfig.load(None, [*TINY, "steps=1", "size=nano", "precision=fp32", "drop_path=0.3",
                                 "drop_rate=0.5", f"activation_checkpointing={str(checkpointing).lower()}",
                                 *CONFIGS[name]])


def train_step(cfg: RunConfig):
    """(loss, {name: grad}, trainable blocks' forward calls before and after the backward, model)
    of one forward/backward from fixed seeds."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    objective = build_objective(cfg)
    data = build_dataset(cfg.data, "train")
    batch = collate_batch([data[i] for i in range(cfg.micro_batch)])
    calls = [0]

    def count(module, args):
        calls[0] += 1
    # The DINO teacher runs under no_grad, so only the blocks with gradients are checkpointed.
    for m in model.modules():
        if isinstance(m, Block) and any(p.requires_grad for p in m.parameters()):
            m.register_forward_pre_hook(count)
    torch.manual_seed(1)
    loss, _ = objective.loss(model, batch, 0, torch.Generator().manual_seed(2))
    forward_calls = calls[0]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, (forward_calls, calls[0]), model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpointing_gives_the_same_loss_and_gradients_and_recomputes_every_block(name):
    loss_off, grads_off, calls_off, model_off = train_step(tiny(name, False))
    loss_on, grads_on, calls_on, model_on = train_step(tiny(name, True))
    assert {m.activation_checkpointing for m in model_on.modules() if isinstance(m, Transformer)} == {True}
    assert {m.activation_checkpointing for m in model_off.modules() if isinstance(m, Transformer)} == {False}
    # Not vacuous: with checkpointing every trainable block's forward runs once more in the backward.
    assert calls_off[0] > 0 and calls_off == (calls_off[0], calls_off[0])
    assert calls_on == (calls_off[0], 2 * calls_off[0])

    torch.testing.assert_close(loss_on, loss_off, atol=1e-6, rtol=1e-6)
    assert grads_on.keys() == grads_off.keys()
    for n in grads_off:
        assert grads_off[n] is not None and grads_on[n] is not None, n
        torch.testing.assert_close(grads_on[n], grads_off[n], atol=1e-6, rtol=1e-6, msg=n)


def test_checkpointing_replays_the_stochastic_depth_draws_and_leaves_the_rng_where_it_would_be():
    """A block whose recompute drew fresh DropPath masks would get gradients of another function;
    the RNG stream after the backward is also the one a run without checkpointing sees."""
    torch.manual_seed(0)
    model = Transformer(depth=3, dim=32, heads=2, mlp_hidden=64, drop_path=0.9).train()
    tokens = torch.randn(8, 5, 32)
    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad()
        torch.manual_seed(5)
        out = model(tokens)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()], torch.rand(4)))
    (out_a, grads_a, next_a), (out_b, grads_b, next_b) = results
    torch.testing.assert_close(out_b, out_a, atol=0, rtol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert torch.equal(next_a, next_b)


def test_checkpointing_is_off_in_eval_and_without_grad():
    torch.manual_seed(0)
    model = Transformer(depth=2, dim=32, heads=2, mlp_hidden=64, drop_path=0.2)
    assert model.activation_checkpointing is False
    model.activation_checkpointing = True
    calls = [0]
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    tokens = torch.randn(2, 4, 32, requires_grad=True)
    model.eval()(tokens).sum().backward()
    assert calls[0] == 2  # eval: no recomputation
    with torch.no_grad():
        model.train()(tokens)
    assert calls[0] == 4
    model.train()(tokens).sum().backward()
    assert calls[0] == 8  # train with grad: each block once more in the backward


def test_checkpointed_pool_and_padding_mask_match_the_plain_forward():
    """The cls_only last block and the padding mask go through the checkpoint unchanged."""
    torch.manual_seed(0)
    model = Transformer(depth=3, dim=32, heads=2, mlp_hidden=64, drop_path=0.3).train()
    tokens = torch.randn(4, 6, 32)
    pad = torch.zeros(4, 6, dtype=torch.bool)
    pad[:, 4:] = True
    outs = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad()
        torch.manual_seed(3)
        pooled = model.pool(tokens, pad)
        pooled.sum().backward()
        outs.append((pooled.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=0, rtol=0)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    # Padded positions still change nothing, with checkpointing on.
    changed = tokens.clone()
    changed[:, 4:] = torch.randn(4, 2, 32)
    torch.manual_seed(3)
    a = model.pool(tokens, pad)
    torch.manual_seed(3)
    b = model.pool(changed, pad)
    torch.testing.assert_close(a, b)


def test_a_pad_without_padding_gives_the_unmasked_result():
    """_with_cls always builds the mask when pad is given (no host read of pad.any()): an all-False
    pad must attend exactly as no mask does."""
    torch.manual_seed(0)
    model = Transformer(depth=2, dim=32, heads=2, mlp_hidden=64).eval()
    tokens = torch.randn(3, 5, 32)
    _, mask = model._with_cls(tokens, torch.zeros(3, 5, dtype=torch.bool))
    assert mask is not None and mask.shape == (3, 1, 1, 6) and bool(mask.all())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, torch.zeros(3, 5, dtype=torch.bool)), model(tokens),
                                   atol=1e-6, rtol=1e-6)
