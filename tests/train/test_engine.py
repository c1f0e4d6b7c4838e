"""The engine a run gets: half precision at ZeRO-0 is built on DeepSpeed's stage-1 path (not its
per-tensor FP16_UnfusedOptimizer), and the MFU denominators."""
import pytest
from clitools import TINY

from scaling.config import RunConfig
from scaling.train.engine import build_ds_config
from scaling.train.throughput import Throughput, datasheet_peak_for


def _cfg(*overrides):
    return RunConfig.load(None, [*TINY, *overrides])


@pytest.mark.parametrize("precision, stage, built, fp32_accumulation", [
    ("bf16", 0, 1, True), ("fp16", 0, 1, False), ("fp32", 0, 0, False),
    ("bf16", 1, 1, True), ("bf16", 2, 2, False), ("bf16", 3, 3, False),
])
def test_half_precision_at_stage_0_is_built_as_stage_1(precision, stage, built, fp32_accumulation):
    ds = build_ds_config(_cfg(f"precision={precision}", f"zero_stage={stage}"), 1, device="cuda")
    assert ds["zero_optimization"]["stage"] == built
    assert ("data_types" in ds) == fp32_accumulation
    if fp32_accumulation:
        assert ds["data_types"] == {"grad_accum_dtype": "fp32"}


def test_bf16_at_stage_0_runs_on_deepspeeds_bf16_optimizer(process_group_env):
    from scaling.models import build_model
    from scaling.train.engine import build_engine, init_distributed

    init_distributed()
    cfg = _cfg("precision=bf16", "zero_stage=0", "method=vatt")
    engine, _ = build_engine(cfg, build_model(cfg), build_ds_config(cfg, 1))
    assert type(engine.optimizer).__name__ == "BF16_Optimizer"


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12), ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 NVL", "bf16", 835e12), ("NVIDIA H200", "bf16", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12), ("NVIDIA A100-SXM4-80GB", "fp32", 156e12),
    ("NVIDIA GH200 480GB", "bf16", 989.4e12), ("Some Future GPU", "bf16", None),
])
def test_datasheet_peaks_by_device_name(name, precision, peak):
    assert datasheet_peak_for(name, precision) == peak


def test_cpu_throughput_has_no_datasheet_mfu_and_averages_the_interval():
    meter = Throughput(1e9, 8, "cpu")
    for _ in range(3):
        meter.start()
    figures = meter.stop()
    assert "mfu_datasheet" not in figures and figures["samples_per_s"] > 0
    assert meter._t0 is None  # the next start() opens a new interval
