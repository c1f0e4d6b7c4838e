"""`describe`: analytic costs agree with torch's FLOP counter on the real model; memory formulas."""
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.config import ConfigError, RunConfig
from scaling.describe import describe, model_state_bytes
from scaling.losses import DINOLoss
from scaling.models import build_model, crop_geometry
from scaling.objectives import VATTObjective

B = 4


def counted_flops(fn) -> int:
    # The math SDPA backend decomposes attention into matmuls the counter sees; the fused CPU
    # kernel has no FLOP formula registered in torch's counter.
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def vatt_step(cfg):
    model = build_model(cfg).train()
    d = cfg.data
    video = torch.rand(B, 3, d.frames, d.resolution, d.resolution)
    audio = torch.rand(B, d.audio_samples)
    text = torch.randint(1, d.vocab_size, (B, d.captions, d.max_words))

    objective = VATTObjective(cfg)

    def run():
        va, vt = objective.pair_losses(model(video, audio, text), 0.07, None)  # vatt.loss's terms
        (va + vt).backward()
    return run


def _crop(cfg, geo, which):
    r = geo[f"{which}_resolution"]
    if cfg.dino.input == "image":
        return torch.rand(B, 3, r, r)
    return torch.rand(B, 3, geo[f"{which}_frames"], r, r)


def dino_step(cfg):
    model = build_model(cfg).train()
    geo = crop_geometry(cfg)
    crops = [_crop(cfg, geo, "global")] * 2 + [_crop(cfg, geo, "local")] * cfg.dino.local_crops
    loss_fn = DINOLoss(cfg.dino.out_dim, len(crops), 0.04, 0.04, 0, 1)

    def run():
        s, t = model(crops)
        loss_fn(s, t, 0).backward()
    return run


def simclr_step(cfg):
    from scaling.losses import nt_xent_loss

    model = build_model(cfg).train()
    geo = crop_geometry(cfg)
    views = [torch.rand(B, 3, geo["global_frames"], geo["global_resolution"], geo["global_resolution"])] * 2

    def run():
        z1, z2 = model(views).chunk(2)
        nt_xent_loss(z1, z2).backward()
    return run


STEPS = {"vatt": vatt_step, "dino": dino_step, "simclr": simclr_step}


@pytest.mark.parametrize("overrides", [
    ["method=simclr", "size=nano"],
    ["method=simclr", "size=micro", "drop_rate=0.5"],
    ["method=vatt", "size=nano", "drop_rate=0.0"],
    ["method=vatt", "size=micro", "drop_rate=0.5"],
    ["method=vatt", "size=nano", "drop_rate=0.75", "vatt.shared_backbone=true"],
    ["method=vatt", "size=nano", "vatt.loss=asymmetric"],
    ["method=vatt", "size=nano", "vatt.loss=sigmoid"],
    ["method=dino", "size=nano", "drop_rate=0.0"],
    ["method=dino", "size=micro", "drop_rate=0.5", "dino.local_crops=2"],
    ["method=dino", "size=nano", "dino.input=image", "dino.patch_size=16", "data.resolution=64"],
])
def test_analytic_flops_agree_with_the_flop_counter_within_5_percent(overrides):
    cfg = RunConfig.load(None, ["steps=1", f"global_batch={B}", f"micro_batch={B}", "data.vocab_size=1000",
                                "dino.out_dim=1024", "dino.hidden_dim=512", *overrides])
    measured = counted_flops(STEPS[cfg.method](cfg))
    analytic = describe(cfg)["flops_per_sample"] * B
    assert abs(analytic / measured - 1) < 0.05, (analytic, measured)


def test_droptoken_halves_video_and_audio_tokens_and_the_counted_forward_flops_fall_accordingly():
    base = ["steps=1", f"global_batch={B}", f"micro_batch={B}", "size=micro", "data.frames=16", "data.resolution=64"]
    full, half = (RunConfig.load(None, base + [f"drop_rate={r}"]) for r in (0.0, 0.5))
    d_full, d_half = describe(full), describe(half)
    assert d_half["tokens"]["video"] * 2 == d_full["tokens"]["video"] == 64
    assert d_half["tokens"]["audio"] * 2 == d_full["tokens"]["audio"] == 32
    assert d_half["tokens"]["text"] == d_full["tokens"]["text"]  # text is never dropped

    def video_forward(cfg):
        model = build_model(cfg).train()
        video = torch.rand(B, 3, 16, 64, 64)
        return counted_flops(lambda: model.video(video))

    f_full, f_half = video_forward(full), video_forward(half)
    analytic_ratio = d_half["flops_per_sample_by_part"]["video"] / d_full["flops_per_sample_by_part"]["video"]
    assert 0.45 < f_half / f_full < 0.55           # half the tokens: about half the FLOPs (tokenizer included)
    assert abs(f_half / f_full - analytic_ratio) < 0.02


@pytest.mark.parametrize("overrides", [
    ["method=vatt", "drop_rate=0.0"],
    ["method=vatt", "drop_rate=0.5"],
    ["method=vatt", "drop_rate=0.5", "vatt.shared_backbone=true"],
    ["method=dino", "drop_rate=0.5"],
    ["method=dino", "dino.input=image", "dino.patch_size=16", "data.resolution=64"],
    ["method=simclr", "drop_rate=0.5"],
])
def test_eval_flops_count_every_token_of_the_whole_clip_whatever_the_training_drop(overrides):
    """Evaluation embeds whole clips (or images): the counted FLOPs of the evaluation backbone's
    forward match eval_flops_per_sample, tokenizer included, at any training DropToken rate."""
    cfg = RunConfig.load(None, ["steps=1", f"global_batch={B}", f"micro_batch={B}", "size=micro",
                                "data.vocab_size=1000", "dino.out_dim=1024", *overrides])
    model = build_model(cfg).eval()
    d = cfg.data
    if cfg.method == "dino" and cfg.dino.input == "image":
        x = torch.rand(B, 3, d.resolution, d.resolution)
    else:
        x = torch.rand(B, 3, d.frames, d.resolution, d.resolution)
    with torch.no_grad():
        encode = model.encode_video if cfg.method == "vatt" else model.encode
        measured = counted_flops(lambda: encode(x))
    analytic = describe(cfg)["eval_flops_per_sample"] * B
    assert abs(analytic / measured - 1) < 0.02, (analytic, measured)


def test_droptoken_on_the_image_vit_is_refused():
    with pytest.raises(ConfigError) as err:
        RunConfig.load(None, ["method=dino", "dino.input=image", "drop_rate=0.5"])
    assert err.value.field == "drop_rate"


def test_params_are_split_by_part_and_sum_to_the_model():
    cfg = RunConfig.load(None, ["steps=1", "method=dino", "dino.out_dim=1024"])
    info = describe(cfg)["params"]
    model = build_model(cfg)
    assert info["total"] == sum(p.numel() for p in model.parameters())
    assert info["backbone"] + info["head"] + info["teacher"] == info["total"]
    assert info["trainable"] == info["backbone"] + info["head"] - cfg.dino.out_dim  # frozen weight-norm gain


def test_zero_stage_memory_follows_the_zero_paper():
    psi = 1_000_000
    # mixed precision: 2 + 2 + 12 bytes per parameter, partitioned stage by stage over 4 ranks
    assert model_state_bytes(psi, 0, 0, 4, "bf16")["total"] == 16 * psi
    # bf16 at stage 1 is DeepSpeed's BF16_Optimizer: plus a whole fp32 gradient accumulation buffer
    assert model_state_bytes(psi, 0, 1, 4, "bf16")["total"] == 4 * psi + 4 * psi + 12 * psi / 4
    assert model_state_bytes(psi, 0, 1, 4, "fp16")["total"] == 4 * psi + 12 * psi / 4
    assert model_state_bytes(psi, 0, 2, 4, "bf16")["total"] == 2 * psi + 14 * psi / 4
    assert model_state_bytes(psi, 0, 3, 4, "bf16")["total"] == 16 * psi / 4
    assert model_state_bytes(psi, 0, 0, 4, "fp32")["total"] == 16 * psi
    assert model_state_bytes(psi, 0, 3, 4, "bf16", offload=True)["params"] == 0


def test_batch_arithmetic_is_resolved():
    cfg = RunConfig.load(None, ["steps=1", "global_batch=256", "micro_batch=32", "world_size=2"])
    batch = describe(cfg)["batch"]
    assert (batch["micro_batch"], batch["accumulation"], batch["world_size"]) == (32, 4, 2)
    assert batch["negatives_per_positive"] == 63


def test_cli_describe_json_has_the_documented_keys():
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "describe", "steps=10", "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    for key in ("params", "flops_per_sample", "tokens", "batch", "memory_per_gpu"):
        assert key in info


def test_cli_rejects_a_bad_config_before_any_work():
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", "describe", "steps=10", "drop_rate=1.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    # The field, the value and the allowed range (the wording is scaling.validate's).
    assert "drop_rate: got 1.5;" in proc.stderr and "[0.0, 1.0)" in proc.stderr


def test_activation_checkpointing_lowers_the_memory_estimate_and_adds_the_recompute_flops():
    base = ["steps=1", "method=vatt", "size=large", "global_batch=32", "micro_batch=32", "precision=bf16"]
    off = describe(RunConfig.load(None, base), device="cuda")
    on = describe(RunConfig.load(None, [*base, "activation_checkpointing=true"]), device="cuda")
    m_off, m_on = off["memory_per_gpu"], on["memory_per_gpu"]
    assert (m_off["activation_checkpointing"], m_on["activation_checkpointing"]) == (False, True)
    assert m_on["model_states_bytes"] == m_off["model_states_bytes"]
    assert m_on["activations_bytes"] < m_off["activations_bytes"] / 4
    assert m_on["total_bytes"] < m_off["total_bytes"]
    # Model FLOPs (what MFU divides by) do not change; the hardware does one more forward of the blocks.
    assert on["flops_per_sample"] == off["flops_per_sample"]
    assert off["hardware_flops_per_sample"] == off["flops_per_sample"]
    assert off["flops_per_sample"] < on["hardware_flops_per_sample"] < 4 / 3 * off["flops_per_sample"] * 1.001


def test_checkpointed_activations_are_one_value_per_layer_plus_one_block_being_recomputed():
    from scaling.describe import activation_bytes

    cfg = RunConfig.load(None, ["steps=1", "global_batch=2", "micro_batch=2", "activation_checkpointing=true"])
    # two encoders: 10 tokens x width 8 x 3 layers, and 20 tokens x width 4 x 2 layers, in bf16
    encoders = [(10, 8, 3), (20, 4, 2)]
    kept = 2 * 2 * (10 * 8 * 3 + 20 * 4 * 2)
    recomputed = 17 * 2 * 2 * max(10 * 8, 20 * 4)
    assert activation_bytes(cfg, encoders, "bf16") == kept + recomputed
    plain = RunConfig.load(None, ["steps=1", "global_batch=2", "micro_batch=2"])
    assert activation_bytes(plain, encoders, "bf16") == 17 * 2 * 2 * (10 * 8 * 3 + 20 * 4 * 2)


def test_importing_describe_loads_no_torch():
    """`sweeps.commands` formats its tables with `human`: importing describe must stay torch-free."""
    code = ("import sys; import scaling.describe as d; assert d.human(1.6e12, 'FLOPs') == '1.60 TFLOPs'; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("loss", ["nce", "asymmetric", "sigmoid"])
def test_the_contrastive_loss_flops_of_each_vatt_loss_match_the_counter(loss):
    """describe's "loss" part against the counted FLOPs of vatt.loss's two terms, forward and
    backward, on embeddings of the global batch (the matmuls of the similarities)."""
    b = 16
    cfg = RunConfig.load(None, ["steps=1", f"global_batch={b}", f"micro_batch={b}", "method=vatt",
                                f"vatt.loss={loss}", "data.vocab_size=1000"])
    v, k = cfg.vatt, cfg.data.captions
    out = {"video_va": torch.randn(b, v.va_dim), "audio_va": torch.randn(b, v.va_dim),
           "video_vt": torch.randn(b, v.vt_dim), "text_vt": torch.randn(b, k, v.vt_dim)}
    out = {name: t.requires_grad_() for name, t in out.items()}
    if loss == "sigmoid":
        out.update({f"{s}_{p}": torch.zeros(1, requires_grad=True) for s in ("va", "vt") for p in ("log_scale", "bias")})
    objective = VATTObjective(cfg)

    def run():
        va, vt = objective.pair_losses(out, 0.07, None)
        (va + vt).backward()
    measured = counted_flops(run)
    analytic = describe(cfg)["flops_per_sample_by_part"]["loss"] * b
    assert abs(analytic / measured - 1) < 0.02, (analytic, measured)


def test_gradcache_costs_one_more_forward_on_the_hardware_and_a_loss_over_the_optimizer_batch():
    base = ["method=vatt", "size=nano", "global_batch=64", "steps=1"]
    batch = describe(RunConfig.load(None, [*base, "micro_batch=64"]))
    accum = describe(RunConfig.load(None, [*base, "micro_batch=8"]))
    cached = describe(RunConfig.load(None, [*base, "micro_batch=8", "vatt.negatives=cached"]))
    # At equal negatives the model FLOPs equal one big micro-batch's, loss included ...
    assert cached["flops_per_sample"] == batch["flops_per_sample"]
    assert cached["flops_per_sample_by_part"]["loss"] == batch["flops_per_sample_by_part"]["loss"]
    assert accum["flops_per_sample_by_part"]["loss"] == batch["flops_per_sample_by_part"]["loss"] // 8
    # ... and the hardware runs the forward of the towers and heads twice: at least a third of their
    # training FLOPs (the tokenizers' input needs no gradient, so their forward is more than a
    # third), less than half.
    parts = cached["flops_per_sample_by_part"]
    towers = sum(parts[k] for k in ("video", "audio", "text", "heads"))
    extra = cached["hardware_flops_per_sample"] - batch["hardware_flops_per_sample"]
    assert towers / 3 <= extra < towers / 2
    assert batch["hardware_flops_per_sample"] == batch["flops_per_sample"]
    assert accum["hardware_flops_per_sample"] == accum["flops_per_sample"]
    assert cached["batch"]["negatives_per_positive"] == 63 and accum["batch"]["negatives_per_positive"] == 7
