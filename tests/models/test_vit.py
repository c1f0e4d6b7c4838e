"""The image ViT loads official DINO backbone state dicts and computes the DINO ViT function."""
import math

import pytest
import torch
import torch.nn.functional as F

from scaling.models import vit_base, vit_small, vit_tiny


def official_dino_vit_s16_shapes():
    """Key -> shape of facebookresearch/dino's ViT-S/16 backbone checkpoint (width 384, 12 blocks)."""
    d, h = 384, 1536
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d),
              "patch_embed.proj.weight": (d, 3, 16, 16), "patch_embed.proj.bias": (d,),
              "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(12):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (h, d), b + "mlp.fc1.bias": (h,),
            b + "mlp.fc2.weight": (d, h), b + "mlp.fc2.bias": (d,)})
    return shapes


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def reference_forward(sd, x, heads, depth):
    """The DINO ViT function written out from its definition, independent of our modules."""
    d = sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), t], 1) + sd["pos_embed"]
    ln = lambda z, p: F.layer_norm(z, (d,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    for i in range(depth):
        b = f"blocks.{i}."
        y = ln(t, b + "norm1")
        qkv = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(t.shape[0], t.shape[1], 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(d // heads)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(t.shape)
        t = t + F.linear(y, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        y = F.gelu(F.linear(ln(t, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        t = t + F.linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return ln(t, "norm")[:, 0]


def test_official_vit_s16_state_dict_loads_strictly_with_same_keys_and_shapes():
    shapes = official_dino_vit_s16_shapes()
    model = vit_small(patch_size=16)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.load_state_dict(random_state_dict(shapes), strict=True)


def test_two_builds_with_the_same_weights_give_identical_outputs_and_the_dino_function():
    sd = random_state_dict(official_dino_vit_s16_shapes())
    a, b = vit_small(patch_size=16), vit_small(patch_size=16)
    a.load_state_dict(sd, strict=True)
    b.load_state_dict(sd, strict=True)
    a.eval(), b.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out_a, out_b, ref = a(x), b(x), reference_forward(sd, x, heads=6, depth=12)
    assert out_a.shape == (2, 384)
    assert torch.equal(out_a, out_b)
    torch.testing.assert_close(out_a, ref, atol=1e-4, rtol=1e-4)


def _official_interpolation(pos_embed, npatch, w, h, patch):
    """facebookresearch/dino's interpolate_pos_encoding, written from its formula: its (w, h) are the
    input's dims 2 and 3, and the grid is resized by a scale factor with 0.1 added to each side."""
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    side = math.sqrt(n)
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
    assert grid.shape[-2:] == (int(w0), int(h0))
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


@pytest.mark.parametrize("h, w", [(96, 96), (160, 128), (128, 160), (480, 480), (224, 224), (64, 224)])
def test_position_embeddings_interpolate_as_official_dino_does(h, w):
    model = vit_tiny(patch_size=16).eval()
    with torch.no_grad():
        ours = model.interpolate_pos_encoding(h, w)
        official = _official_interpolation(model.pos_embed, (h // 16) * (w // 16), h, w, 16)
        tokens = model.tokens(torch.randn(1, 3, h, w))
    assert ours.shape == official.shape == (1, 1 + (h // 16) * (w // 16), 192)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)
    assert tokens.shape == (1, 1 + (h // 16) * (w // 16), 192)
    if (h, w) == (224, 224):  # at the trained resolution the table is used as it is
        assert ours is model.pos_embed
    else:  # a target-size resize (what we did before) samples elsewhere
        size = F.interpolate(model.pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2),
                             size=(h // 16, w // 16), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 192)
        assert (size - official[:, 1:]).abs().max() > 1e-4


def test_tokens_go_through_the_module_call_and_their_cls_row_is_the_feature():
    """tokens() runs as a module call, so forward hooks (ZeRO-3 gathers parameters in them) fire,
    and its CLS row is what forward() returns."""
    model = vit_tiny(patch_size=16).eval()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(module))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, cls = model.tokens(x), model(x)
    assert calls == [model, model]
    assert tokens.shape == (2, 1 + 4 * 4, 192)
    torch.testing.assert_close(tokens[:, 0], cls, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("factory,width,patch", [(vit_tiny, 192, 8), (vit_small, 384, 8), (vit_base, 768, 16)])
def test_factories_build_dino_architectures(factory, width, patch):
    with torch.device("meta"):
        model = factory(patch_size=patch)
    assert model.patch_embed.proj.weight.shape == (width, 3, patch, patch)
    assert len(model.blocks) == 12
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6


def test_patch_size_other_than_8_or_16_is_refused():
    with pytest.raises(ValueError, match="patch_size: got 14; allowed values: 8, 16"):
        vit_small(patch_size=14)


def test_stochastic_depth_is_active_in_training_only():
    model = vit_tiny(patch_size=16, drop_path=0.5, img_size=32)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
