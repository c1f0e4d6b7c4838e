"""Collectives on 2 real gloo ranks: gathered negatives and synchronised BN give full-batch results."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scaling.distributed import SyncBatchNorm1d
from scaling.losses import DINOLoss, asymmetric_nce_loss, mil_nce_loss, nce_loss, nt_xent_loss, sigmoid_loss

WORLD = 2
# Windows of one video (repeated sampling) share an id; these pairs straddle the two ranks.
GROUPS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.randn(8, 3, 6, generator=g)


def _variant_losses(x, y, yk, groups):
    """vatt.loss=asymmetric and sigmoid, each on one and on K positives (masked), and SimCLR's NT-Xent, with their gradients:
    the embeddings' and, for sigmoid, its learnable scale's and bias's (not gathered, so each rank
    gets the whole gradient of the global loss)."""
    out = {}
    for name in ("asymmetric", "sigmoid", "nt_xent"):
        xl, yl, ykl = (t.clone().requires_grad_() for t in (x, y, yk))
        extra = {}
        if name == "asymmetric":
            loss = asymmetric_nce_loss(xl, yl, 0.1) + asymmetric_nce_loss(xl, ykl, 0.1, groups)
        elif name == "nt_xent":  # SimCLR's two views (x, y); yk takes no part
            loss = nt_xent_loss(xl, yl, 0.1) + 0 * ykl.sum()
        else:
            log_scale, bias = torch.tensor([1.5], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
            loss = sigmoid_loss(xl, yl, log_scale, bias) + sigmoid_loss(xl, ykl, log_scale, bias, groups)
            extra = {"log_scale": log_scale, "bias": bias}
        loss.backward()
        out[name] = {"loss": loss.item(), "gx": xl.grad, "gy": yl.grad, "gyk": ykl.grad,
                     **{k: v.grad for k, v in extra.items()}}
    return out


def _worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x, y, yk = _data()
    sl = slice(rank * 4, rank * 4 + 4)
    xl, yl, ykl = (t[sl].clone().requires_grad_() for t in (x, y, yk))
    loss = nce_loss(xl, yl) + mil_nce_loss(xl, ykl)
    loss.backward()
    xm, ym, ykm = (t[sl].clone().requires_grad_() for t in (x, y, yk))
    masked = nce_loss(xm, ym, groups=GROUPS[sl]) + mil_nce_loss(xm, ykm, groups=GROUPS[sl])
    masked.backward()
    variants = _variant_losses(*(t[sl] for t in (x, y, yk)), GROUPS[sl])
    bn = SyncBatchNorm1d(6)
    z = x[sl].clone().requires_grad_()
    out = bn(z)
    (out * torch.arange(6.0)).sum().backward()
    dino = DINOLoss(6, 2, 0.04, 0.04, 0, 1)
    dino(torch.randn(4, 6), y[sl], 0)
    dino.update_center()
    result = {"loss": loss.item(), "gx": xl.grad, "gy": yl.grad, "gyk": ykl.grad, "bn": out.detach(),
              "masked": masked.item(), "gx_masked": xm.grad, "gy_masked": ym.grad, "gyk_masked": ykm.grad,
              "bn_grad": z.grad, "running_mean": bn.running_mean, "center": dino.center, "variants": variants}
    torch.save(result, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_gathered_losses_and_sync_bn_on_two_ranks_equal_the_full_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD, join=True)
    x, y, yk = (t.clone().requires_grad_() for t in _data())
    loss = nce_loss(x, y) + mil_nce_loss(x, yk)
    loss.backward()
    xm, ym, ykm = (t.clone().requires_grad_() for t in _data())
    masked = nce_loss(xm, ym, groups=GROUPS) + mil_nce_loss(xm, ykm, groups=GROUPS)
    masked.backward()
    full_variants = _variant_losses(*_data(), GROUPS)
    bn = torch.nn.BatchNorm1d(6)
    z = _data()[0].clone().requires_grad_()
    out = bn(z)
    (out * torch.arange(6.0)).sum().backward()
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"out.{rank}")
        sl = slice(rank * 4, rank * 4 + 4)
        # Every rank computes the global loss from all 8 pairs...
        assert abs(r["loss"] - loss.item()) < 1e-5
        # ...and its local rows receive the sum over ranks' copies: WORLD x the true gradient, which
        # the engine's gradient averaging turns back into the gradient of the global loss.
        torch.testing.assert_close(r["gx"] / WORLD, x.grad[sl])
        torch.testing.assert_close(r["gy"] / WORLD, y.grad[sl])
        torch.testing.assert_close(r["gyk"] / WORLD, yk.grad[sl])
        # The same with same-video pairs masked: the group ids are gathered with the embeddings.
        assert abs(r["masked"] - masked.item()) < 1e-5 and abs(masked.item() - loss.item()) > 1e-4
        for key, leaf in (("gx_masked", xm), ("gy_masked", ym), ("gyk_masked", ykm)):
            torch.testing.assert_close(r[key] / WORLD, leaf.grad[sl])
        for name, got in r["variants"].items():
            want = full_variants[name]
            assert abs(got["loss"] - want["loss"]) < 1e-5 * max(1.0, abs(want["loss"]))
            for key in ("gx", "gy", "gyk"):
                torch.testing.assert_close(got[key] / WORLD, want[key][sl])
            for key in ("log_scale", "bias"):
                if key in want:
                    torch.testing.assert_close(got[key], want[key])
        torch.testing.assert_close(r["bn"], out[sl].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["bn_grad"], z.grad[sl], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["running_mean"], bn.running_mean)
        # The DINO centre is all-reduced: both ranks hold the EMA of the global teacher mean.
        torch.testing.assert_close(r["center"], 0.1 * _data()[1].mean(0, keepdim=True))
