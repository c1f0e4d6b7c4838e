"""TensorBoard events, read back with TensorBoard's own EventAccumulator."""
from clitools import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

COMMON = ["train/loss", "train/lr", "train/weight_decay", "train/grad_norm", "train/samples_per_s",
          "train/tokens_per_s", "train/tflops_per_device", "train/mfu", "train/memory_gb", "eval/knn_top1"]
GNS = ["gns/b_simple", "gns/grad_sq", "gns/trace_cov"]
PER_METHOD = {
    "vatt": ["train/loss_va", "train/loss_vt", "train/retrieval_va_top1", "train/negatives_per_positive",
             "eval/v2t_r1", "eval/t2v_median_rank"],
    "dino": ["train/teacher_entropy", "train/kl_student_teacher", "train/center_norm", "train/log_out_dim",
             "train/teacher_momentum", "train/teacher_temp"],
}


def test_events_hold_the_scalars_and_one_hparams_entry(tmp_path, tiny):
    for method in ("vatt", "dino"):
        run_dir = tmp_path / method
        run_cli("train", *tiny, f"method={method}", "steps=3", "gns.every_steps=2", "--run-dir", str(run_dir))
        acc = EventAccumulator(str(run_dir / "tb"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        missing = [t for t in COMMON + PER_METHOD[method] + GNS if t not in tags]
        assert not missing, (method, missing)
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
        assert [e.step for e in acc.Scalars("gns/b_simple")] == [2]  # every gns.every_steps

        hp = EventAccumulator(str(run_dir / "tb" / "hparams"))
        hp.Reload()
        content = hp.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in content
        info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert info.session_start_info.hparams["method"].string_value == method
        assert info.session_start_info.hparams["global_batch"].number_value == 8
        assert [p.name for p in (run_dir / "tb").iterdir() if p.is_dir()] == ["hparams"]
