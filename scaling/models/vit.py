"""One-run layer: the shared transformer core (pre-norm blocks, fused SDPA attention,
stochastic depth) and the image ViT whose state_dict matches the official DINO backbones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from scaling import draws


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescaling the survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # Per sample, keyed by the global sample in training (scaling.draws), torch's RNG otherwise.
        mask = (draws.rand(x.shape[0], device=x.device) < keep).to(x.dtype)
        return x * mask.view((x.shape[0],) + (1,) * (x.ndim - 1)) / keep


class Dropout(nn.Module):
    """Dropout (in training mode) whose mask is keyed by the global sample (`draws.uniform_like`), so
    a run is the same computation on any number of ranks, as with every other random draw."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        return x * (draws.uniform_like(x) < keep).to(x.dtype) / keep


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, queries: int | None = None) -> torch.Tensor:
        """queries: only the first `queries` tokens ask (all tokens still serve as keys and values)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if queries is not None:
            q, n = q[:, :, :queries], queries
        # The fused kernel picks flash / memory-efficient / math by device and dtype.
        # mask: (B, 1, 1, N) booleans, True where a key may be attended to.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    dropout: after every dense layer but the qkv map (the attention's output projection, both MLP
    layers), as ViT (Dosovitskiy et al.) on which VATT builds; no dropout on attention weights."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cls_only: bool = False) -> torch.Tensor:
        """cls_only: return only the CLS token's output (B, 1, D). It still attends to every token,
        so it equals the full block's row 0; the other rows' attention and MLP are skipped."""
        if cls_only:
            x = x[:, :1] + self.drop_path(self.attn(self.norm1(x), mask, queries=1))
        else:
            x = x + self.drop_path(self.attn(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated normal (std 0.02) for linear maps, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Transformer(nn.Module):
    """A stack of blocks with a learnable CLS/aggregation token and a final norm.

    Input: tokens (B, N, D) already embedded (with positions). forward: (B, 1 + N, D) after the
    norm, index 0 being the pooled feature; pool: that feature alone (B, D), computed without the
    last block's work for the other tokens (whose outputs nothing downstream reads).

    activation_checkpointing (set by `build_model` from the RunConfig): in training with grad
    enabled, each block keeps only its input and recomputes its activations in the backward.
    """

    activation_checkpointing: bool = False

    def __init__(self, depth: int, dim: int, heads: int, mlp_hidden: int, drop_path: float = 0.0,
                 dropout: float = 0.0, cls_token: bool = True):
        super().__init__()
        self.dim = dim
        # Without its own CLS token (the modality-agnostic VATT), each call passes the caller's.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        # Linearly increasing stochastic depth, as in DeiT/DINO.
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        # Dropout (ViT's rule): on the embedded tokens, positions added, and in every block.
        self.pos_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_hidden, r, dropout) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None = None, pooled: bool = False) -> torch.Tensor:
        """(B, 1 + N, D) after the final norm; pooled: only the CLS row, (B, 1, D)."""
        last = len(self.blocks) - 1
        # Eval and no_grad (the DINO teacher, evaluation) save no activations: nothing to recompute.
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = self.pos_drop(x)
        for i, block in enumerate(self.blocks):
            cls_only = pooled and i == last
            if recompute:
                # Per block, so the backward holds one block's activations at a time. The block
                # module itself is the function, so its forward hooks (and its submodules', where
                # ZeRO-3 gathers parameters) run again in the recompute. preserve_rng_state (the
                # default) stashes the CPU RNG and that of x's device and replays them, so DropPath
                # draws the same masks in the recompute, and restores them after, so the RNG
                # stream continues as without checkpointing.
                x = torch.utils.checkpoint.checkpoint(block, x, mask, cls_only=cls_only, use_reentrant=False)
            else:
                x = block(x, mask, cls_only=cls_only)
        return self.norm(x)

    def _with_cls(self, tokens: torch.Tensor, pad: torch.Tensor | None, cls: torch.Tensor | None = None):
        cls = (self.cls_token if cls is None else cls).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        mask = None
        # Always mask when a pad is given, even if nothing is padded (an all-True mask attends as no
        # mask does): testing pad.any() on the host would make a GPU wait for that read every step.
        if pad is not None:
            keep = torch.cat([pad.new_ones(pad.shape[0], 1), ~pad], dim=1)
            mask = keep[:, None, None, :]
        return torch.cat([cls, tokens], dim=1), mask

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None, pooled: bool = False,
                cls: torch.Tensor | None = None) -> torch.Tensor:
        """pad: optional (B, N) booleans, True for padding tokens that no query may attend to.
        pooled: return only the CLS row (B, 1, D). cls: the (1, 1, D) aggregation token to prepend
        in place of this transformer's own."""
        return self.run_blocks(*self._with_cls(tokens, pad, cls), pooled=pooled)

    def pool(self, tokens: torch.Tensor, pad: torch.Tensor | None = None,
             cls: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled (CLS) feature (B, D): forward(tokens, pad)[:, 0] at less cost. It goes
        through the module call, so ZeRO-3 gathers cls_token as for forward."""
        return self(tokens, pad, pooled=True, cls=cls)[:, 0]


class PatchEmbed(nn.Module):
    """Image patches -> tokens with a strided convolution (the key layout DINO checkpoints use)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(Transformer):
    """Image ViT with the official DINO backbone's parameter names and shapes.

    Keys: cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*,
    norm.*. forward() returns the CLS token after the final norm, like DINO's backbone.
    """

    def __init__(self, *, patch_size: int = 16, img_size: int = 224, dim: int = 384, depth: int = 12,
                 heads: int = 6, mlp_ratio: float = 4.0, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__(depth, dim, heads, int(dim * mlp_ratio), drop_path, dropout)
        self.patch_embed = PatchEmbed(patch_size, dim)
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.embed_dim = dim

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w pixel input, computed as official DINO does: the table
        as it is when the input is square with the trained patch count; otherwise the trained grid
        resized bicubically by the scale factor ((h // p + 0.1) / side, (w // p + 0.1) / side). The
        0.1 keeps the output size from rounding down; a scale factor (not a target size) gives
        different sample positions, by up to ~6e-3 at 96 px."""
        p = self.patch_embed.patch_size
        gh, gw = h // p, w // p
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        n = patch_pos.shape[1]
        if gh * gw == n and h == w:
            return self.pos_embed
        side = math.isqrt(n)
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), scale_factor=((gh + 0.1) / side, (gw + 0.1) / side),
                             mode="bicubic", align_corners=False).to(patch_pos.dtype)
        if grid.shape[-2:] != (gh, gw):
            raise ValueError(f"position embeddings resized to {tuple(grid.shape[-2:])}, not the {gh}x{gw} patch grid")
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def _embed_and_run(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        b, _, h, w = x.shape
        patches = self.patch_embed(x)
        cls = self.cls_token.expand(b, -1, -1).to(patches.dtype)
        x = torch.cat([cls, patches], dim=1) + self.interpolate_pos_encoding(h, w)
        return self.run_blocks(x, pooled=pooled)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All output tokens (B, 1 + N, D) after the final norm. Goes through the module call, so an
        engine that gathers parameters in forward hooks (ZeRO-3) gathers them here too."""
        return self(x, all_tokens=True)

    def forward(self, x: torch.Tensor, all_tokens: bool = False) -> torch.Tensor:
        """The CLS token after the final norm (the last block computes nothing else); with
        all_tokens, every output token (B, 1 + N, D)."""
        if all_tokens:
            return self._embed_and_run(x)
        return self._embed_and_run(x, pooled=True)[:, 0]


def _vit(dim: int, depth: int, heads: int, patch_size: int, **kwargs) -> VisionTransformer:
    if patch_size not in (8, 16):
        raise ValueError(f"patch_size: got {patch_size}; allowed values: 8, 16")
    return VisionTransformer(patch_size=patch_size, dim=dim, depth=depth, heads=heads, **kwargs)


def vit_tiny(patch_size: int = 16, **kwargs) -> VisionTransformer:
    return _vit(192, 12, 3, patch_size, **kwargs)


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    return _vit(384, 12, 6, patch_size, **kwargs)


def vit_base(patch_size: int = 16, **kwargs) -> VisionTransformer:
    return _vit(768, 12, 12, patch_size, **kwargs)
