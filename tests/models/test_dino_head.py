"""The DINO head's last layer in fp32 under 16-bit parameters (dino.fp32_last_layer)."""
import torch

from scaling.config import RunConfig
from scaling.models import DINOHead, build_model


def _head(fp32_last_layer: bool) -> DINOHead:
    torch.manual_seed(0)
    return DINOHead(64, 4096, hidden_dim=128, bottleneck_dim=32, fp32_last_layer=fp32_last_layer)


def test_the_fp32_last_layer_changes_nothing_in_fp32():
    x = torch.randn(8, 64)
    with_flag, without = _head(True), _head(False)
    assert with_flag.last_layer.fp32 and not without.last_layer.fp32
    out = with_flag(x)
    assert out.dtype == torch.float32 and torch.equal(out, without(x))
    # as the layer computed before the flag existed
    z = torch.nn.functional.normalize(with_flag.mlp(x), dim=-1, p=2)
    ll = with_flag.last_layer
    assert torch.equal(out, torch.nn.functional.linear(z, ll.weight_g * ll.weight_v / ll.weight_v.norm(dim=1, keepdim=True)))


def test_under_bf16_the_fp32_last_layer_returns_fp32_closer_to_the_fp32_model():
    torch.manual_seed(1)
    x = torch.randn(256, 64)
    reference = _head(True)(x).detach()  # the fp32 model
    out = {}
    for flag in (True, False):
        head = _head(flag).to(torch.bfloat16)
        out[flag] = head(x.to(torch.bfloat16))
        out[flag].float().sum().backward()  # gradients still reach the bf16 parameters
        assert head.last_layer.weight_v.grad.dtype == torch.bfloat16 and head.mlp[0].weight.grad is not None
        out[flag] = out[flag].detach()
    assert out[True].dtype == torch.float32 and out[False].dtype == torch.bfloat16
    logit_err = {flag: (o.float() - reference).abs().mean() for flag, o in out.items()}
    assert logit_err[True] < logit_err[False]
    # What the flag is for: the teacher's softmax at T=0.04, where bf16's ~0.004 logit steps become ~0.1.
    probs = lambda o: torch.softmax(o.float() / 0.04, dim=-1)  # noqa: E731
    prob_err = {flag: (probs(o) - probs(reference)).abs().sum(-1).mean() for flag, o in out.items()}
    assert prob_err[True] < 0.75 * prob_err[False], prob_err


def test_build_model_passes_fp32_last_layer():
    args = ["method=dino", "steps=1", "dino.out_dim=32", "dino.hidden_dim=32"]
    assert build_model(RunConfig.load(None, args)).student.head.last_layer.fp32
    model = build_model(RunConfig.load(None, [*args, "dino.fp32_last_layer=false"]))
    assert not model.student.head.last_layer.fp32 and not model.teacher.head.last_layer.fp32


def test_the_last_layer_keeps_nn_linears_default_init_as_the_official_head():
    """The official DINOHead applies its truncated-normal init to the MLP, then creates the
    weight-normed last layer, which so keeps nn.Linear's default (Kaiming-uniform) init, and sets
    its gain to 1. Built the official way from the same seed, the weights are the same."""
    from torch import nn

    from scaling.models.vit import init_weights

    torch.manual_seed(0)
    ours = DINOHead(64, 4096, hidden_dim=128, bottleneck_dim=32)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 32))
    mlp.apply(init_weights)
    last = nn.Linear(32, 4096, bias=False)
    for a, b in zip(ours.mlp.parameters(), mlp.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(ours.last_layer.weight_v, last.weight)
    assert torch.equal(ours.last_layer.weight_g, torch.ones(4096, 1))
    bound = 1 / 32 ** 0.5  # Kaiming-uniform with a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not std 0.02
    assert ours.last_layer.weight_v.abs().max() <= bound and ours.last_layer.weight_v.std() > 0.1
