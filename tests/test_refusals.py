"""Refused before compute, nothing half-written: every bad input of every command ends in exit code
2 and one `scaling: invalid config|input: FIELD: ...` message (no traceback), before any process
group, engine, job or run-directory file exists; the workspace is byte-for-byte as it was.

Each case runs the real CLI in a subprocess, in a shared workspace of bad files (its working
directory, so a default `runs/` would show), and compares a snapshot of the whole workspace taken
before and after. The default run (`scaling describe` with no arguments) is checked here too."""
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from clitools import run_cli

from scaling.config import DEFAULT_STEPS, RunConfig


@functools.cache
def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of bad (and a few good) inputs, shared by every case."""
    from PIL import Image

    ws = tmp_path_factory.mktemp("refusals")
    (ws / "malformed.yaml").write_text("size: [tiny\nsteps: 3\n")
    (ws / "evil.yaml").write_text(f'!!python/object/apply:os.system ["touch {ws / "pwned"}"]\n')
    (ws / "evil_field.yaml").write_text(f'size: !!python/object/apply:os.system ["touch {ws / "pwned"}"]\n')
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "binary.yaml").write_bytes(bytes(range(128, 256)))
    (ws / "a_file").write_text("not a folder\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "malformed.jsonl").write_text('{"video": "a.mp4", "captions": ["x"]}\n{"video": \n')
    (ws / "missing_video.jsonl").write_text('{"video": "nowhere.mp4", "captions": ["a caption"]}\n')
    (ws / "junk.mp4").write_bytes(b"this is no video")
    (ws / "junk_video.jsonl").write_text('{"video": "junk.mp4", "captions": ["a caption"]}\n')
    (ws / "shards").mkdir()
    (ws / "shards" / "broken-shards.json").write_text("{not json")
    (ws / "shards" / "nokey-shards.json").write_text("{}")
    (ws / "shards" / "junk-000000.tar").write_bytes(b"no tar either")
    (ws / "empty.csv").write_text("")
    (ws / "points.csv").write_text("params,loss\n1,2\n2,1.5\n4,1.2\n")
    (ws / "empty_dir").mkdir()
    for cls in ("c0", "c1"):  # a tiny good image folder (for a missing eval split)
        (ws / "images" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40, 80, 120)).save(ws / "images" / cls / "a.png")
    # A run directory that exists (resumable): a changed config must leave it untouched.
    (ws / "old_run" / "checkpoints").mkdir(parents=True)
    RunConfig(steps=3).save(ws / "old_run" / "config.yaml")
    (ws / "old_run" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.0}\n')
    (ws / "bad_run").mkdir()
    (ws / "bad_run" / "config.yaml").write_text("steps: [\n")
    (ws / "unfinished_run").mkdir()  # a run directory without model.pt
    RunConfig(steps=3).save(ws / "unfinished_run" / "config.yaml")
    (ws / "profile_bad.yaml").write_text("partition: [local\n")
    spec = {"name": "refusals", "fixed": {"steps": 2, "data.num_workers": 0}, "grid": [{"size": ["nano"]}],
            "dir": str(ws / "sweep_dir"), "launcher": {"type": "local", "nproc": 1}}
    (ws / "spec_malformed.yaml").write_text("name: [refusals\n")
    (ws / "spec_bad_size.yaml").write_text(yaml.safe_dump({**spec, "grid": [{"size": ["huge"]}]}))
    (ws / "spec_unknown_key.yaml").write_text(yaml.safe_dump({**spec, "bogus": 1}))
    (ws / "spec_fp16.yaml").write_text(yaml.safe_dump({**spec, "fixed": {**spec["fixed"], "precision": "fp16"}}))
    (ws / "spec_missing_data.yaml").write_text(yaml.safe_dump(
        {**spec, "fixed": {**spec["fixed"], "data.source": "manifest", "data.path": str(ws / "nowhere.jsonl"),
                           "data.eval_path": str(ws / "nowhere.jsonl")}}))
    return ws


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]   # {ws} is the workspace
    kind: str               # config | input
    field: str              # what the message names first
    cpu_only: bool = False  # a refusal of this machine's device: only where it has no GPU


TRAIN = ("train", "--run-dir", "{ws}/run")
MANIFEST = ("data.source=manifest", "data.num_workers=0")
SHARDS = ("data.source=webdataset", "data.num_workers=0")
CASES = [
    # describe: values, unknown fields, YAML files
    Case("describe-zero-stage-4", ("describe", "zero_stage=4"), "config", "zero_stage"),
    Case("describe-size-huge", ("describe", "size=huge"), "config", "size"),
    Case("describe-negative-batch", ("describe", "global_batch=-1"), "config", "global_batch"),
    Case("describe-unknown-field", ("describe", "sise=tiny"), "config", "sise"),
    Case("describe-unknown-section-field", ("describe", "data.frame=8"), "config", "data.frame"),
    Case("describe-malformed-override", ("describe", "size=["), "config", "size"),
    Case("describe-not-key-value", ("describe", "size"), "config", "override"),
    Case("describe-steps-and-samples", ("describe", "steps=5", "samples=64"), "config", "steps"),
    Case("describe-malformed-yaml", ("describe", "--config", "{ws}/malformed.yaml"), "config", "config"),
    Case("describe-python-tag-yaml", ("describe", "--config", "{ws}/evil.yaml"), "config", "config"),
    Case("describe-python-tag-in-field", ("describe", "--config", "{ws}/evil_field.yaml"), "config", "config"),
    Case("describe-yaml-not-a-mapping", ("describe", "--config", "{ws}/list.yaml"), "config", "config"),
    Case("describe-binary-yaml", ("describe", "--config", "{ws}/binary.yaml"), "config", "config"),
    Case("describe-missing-config", ("describe", "--config", "{ws}/nowhere.yaml"), "config", "config"),
    Case("describe-path-not-a-string", ("describe", "data.source=manifest", "data.path=[a, b]"), "config", "data.path"),
    Case("describe-dino-crop-off-the-voxel-grid", ("describe", "method=dino", "dino.local_resolution=20"), "config",
         "dino.local_resolution"),
    Case("describe-dino-crop-longer-than-clip", ("describe", "method=dino", "dino.local_frames=12"), "config",
         "dino.local_frames"),
    Case("describe-shared-backbone-two-sizes", ("describe", "vatt.shared_backbone=true", "vatt.audio_size=tiny"),
         "config", "vatt.shared_backbone"),
    # train: config, run directory, precision, launcher
    Case("train-zero-stage-4", (*TRAIN, "zero_stage=4"), "config", "zero_stage"),
    Case("train-default-run-dir-bad-value", ("train", "micro_batch=0"), "config", "micro_batch"),
    Case("train-python-tag-yaml", (*TRAIN, "--config", "{ws}/evil.yaml"), "config", "config"),
    Case("train-fp16-on-cpu", (*TRAIN, "precision=fp16"), "config", "precision", cpu_only=True),
    Case("train-run-dir-is-a-file", ("train", "--run-dir", "{ws}/a_file"), "config", "--run-dir"),
    Case("train-run-dir-under-a-file", ("train", "--run-dir", "{ws}/a_file/run"), "config", "--run-dir"),
    Case("train-resume-with-another-config", ("train", "--run-dir", "{ws}/old_run", "size=tiny"), "config", "run_dir"),
    Case("train-resume-malformed-config", ("train", "--run-dir", "{ws}/bad_run"), "config", "config"),
    Case("train-nproc-0", (*TRAIN, "--nproc", "0"), "config", "--nproc"),
    Case("train-nodes-without-launcher", (*TRAIN, "--nodes", "2"), "config", "--nodes"),
    Case("train-unknown-profile", (*TRAIN, "--launcher", "slurm", "--profile", "nowhere"), "config", "--profile"),
    Case("train-malformed-profile", (*TRAIN, "--launcher", "slurm", "--profile", "{ws}/profile_bad.yaml"),
         "config", "--profile"),
    Case("train-slurm-cpu-profile-fp16", (*TRAIN, "--launcher", "slurm", "--profile", "local", "precision=fp16"),
         "config", "precision"),
    Case("train-local-nodes-0", (*TRAIN, "--launcher", "local", "--nodes", "0"), "config", "--nodes"),
    Case("train-local-bad-value", (*TRAIN, "--launcher", "local", "global_batch=-1"), "config", "global_batch"),
    Case("train-local-fp16-on-cpu", (*TRAIN, "--launcher", "local", "precision=fp16"), "config", "precision",
         cpu_only=True),
    # train: data paths and their first entry
    Case("train-missing-manifest", (*TRAIN, *MANIFEST, "data.path={ws}/nowhere.jsonl",
                                    "data.eval_path={ws}/nowhere.jsonl"), "config", "data.path"),
    Case("train-manifest-is-a-folder", (*TRAIN, *MANIFEST, "data.path={ws}/empty_dir",
                                        "data.eval_path={ws}/empty.jsonl"), "config", "data.path"),
    Case("train-empty-manifest", (*TRAIN, *MANIFEST, "data.path={ws}/empty.jsonl",
                                  "data.eval_path={ws}/empty.jsonl"), "config", "data.path"),
    Case("train-malformed-manifest-line", (*TRAIN, *MANIFEST, "data.path={ws}/malformed.jsonl",
                                           "data.eval_path={ws}/malformed.jsonl"), "config", "data.path"),
    Case("train-manifest-video-missing", (*TRAIN, *MANIFEST, "data.path={ws}/missing_video.jsonl",
                                          "data.eval_path={ws}/missing_video.jsonl"), "config", "data.path"),
    Case("train-manifest-video-undecodable", (*TRAIN, *MANIFEST, "data.path={ws}/junk_video.jsonl",
                                              "data.eval_path={ws}/junk_video.jsonl"), "config", "data.path"),
    Case("train-missing-shards", (*TRAIN, *SHARDS, "data.path={ws}/shards/train-{{000000..000003}}.tar",
                                  "data.eval_path={ws}/shards/train-{{000000..000003}}.tar"), "config", "data.path"),
    Case("train-malformed-shard-list", (*TRAIN, *SHARDS, "data.path={ws}/shards/broken-shards.json",
                                        "data.eval_path={ws}/shards/broken-shards.json"), "config", "data.path"),
    Case("train-shard-list-without-shards", (*TRAIN, *SHARDS, "data.path={ws}/shards/nokey-shards.json",
                                             "data.eval_path={ws}/shards/nokey-shards.json"), "config", "data.path"),
    Case("train-shard-not-a-tar", (*TRAIN, *SHARDS, "data.path={ws}/shards/junk-{{000000..000000}}.tar",
                                   "data.eval_path={ws}/shards/junk-{{000000..000000}}.tar"), "config", "data.path"),
    Case("train-missing-eval-split", (*TRAIN, "method=dino", "dino.input=image", "data.source=images",
                                      "data.num_workers=0", "data.train_size=2", "data.path={ws}/images",
                                      "data.eval_path={ws}/no_images"), "config", "data.eval_path"),
    Case("train-empty-image-folder", (*TRAIN, "method=dino", "dino.input=image", "data.source=images",
                                      "data.path={ws}/empty_dir", "data.eval_path={ws}/empty_dir"),
         "config", "data.path"),
    # evaluate, analyze, fit
    Case("evaluate-not-a-run-dir", ("evaluate", "{ws}/empty_dir"), "input", "run_dir"),
    Case("evaluate-missing-dir", ("evaluate", "{ws}/nowhere"), "input", "run_dir"),
    Case("evaluate-unfinished-run", ("evaluate", "{ws}/unfinished_run"), "input", "run_dir"),
    Case("analyze-empty-dir", ("analyze", "{ws}/empty_dir", "--out", "{ws}/report"), "input", "paths"),
    Case("analyze-missing-dir", ("analyze", "{ws}/nowhere", "--out", "{ws}/report"), "input", "paths"),
    Case("analyze-unknown-metric", ("analyze", "{ws}/old_run", "--out", "{ws}/report", "--metric", "final_nope"),
         "input", "paths"),
    Case("analyze-out-is-a-file", ("analyze", "{ws}/old_run", "--out", "{ws}/a_file"), "input", "--out"),
    Case("fit-missing-csv", ("fit", "{ws}/nowhere.csv", "--law", "power", "--x", "params"), "input", "csv"),
    Case("fit-empty-csv", ("fit", "{ws}/empty.csv", "--law", "power", "--x", "params"), "input", "csv"),
    Case("fit-unknown-column", ("fit", "{ws}/points.csv", "--law", "power", "--x", "flops"), "input", "--x"),
    # sweeps
    Case("sweep-plan-missing-spec", ("sweep", "plan", "{ws}/nowhere_spec"), "config", "spec"),
    Case("sweep-plan-malformed-spec", ("sweep", "plan", "{ws}/spec_malformed.yaml"), "config", "spec"),
    Case("sweep-plan-python-tag-spec", ("sweep", "plan", "{ws}/evil.yaml"), "config", "spec"),
    Case("sweep-plan-bad-trial", ("sweep", "plan", "{ws}/spec_bad_size.yaml"), "config", "grid.size"),
    Case("sweep-submit-unknown-key", ("sweep", "submit", "{ws}/spec_unknown_key.yaml"), "config", "bogus"),
    Case("sweep-submit-missing-data", ("sweep", "submit", "{ws}/spec_missing_data.yaml"), "config",
         "fixed/data.path"),
    Case("sweep-submit-fp16-on-cpu", ("sweep", "submit", "{ws}/spec_fp16.yaml"), "config", "fixed/precision",
         cpu_only=True),
    # data commands
    Case("data-check-empty-manifest", ("data", "check", "{ws}/empty.jsonl"), "config", "MANIFEST"),
    Case("data-check-malformed-line", ("data", "check", "{ws}/malformed.jsonl"), "config", "MANIFEST"),
    Case("data-check-bad-override", ("data", "check", "{ws}/malformed.jsonl", "data.frames=7"), "config",
         "data.frames"),
    Case("data-shard-missing-files", ("data", "shard", "{ws}/missing_video.jsonl", "--out", "{ws}/out_shards"),
         "config", "MANIFEST"),
    Case("data-shard-empty-manifest", ("data", "shard", "{ws}/empty.jsonl", "--out", "{ws}/out_shards"),
         "config", "MANIFEST"),
    Case("data-probe-missing-manifest", ("data", "probe", "{ws}/nowhere.jsonl"), "config", "data.path"),
    Case("data-probe-empty-manifest", ("data", "probe", "{ws}/empty.jsonl"), "config", "data.path"),
    Case("data-probe-missing-shards", ("data", "probe", "{ws}/shards/train-{{000000..000001}}.tar"), "config",
         "data.path"),
    Case("data-probe-malformed-shard-list", ("data", "probe", "{ws}/shards/broken-shards.json"), "config",
         "data.path"),
    Case("data-index-missing-folder", ("data", "index", "{ws}/nowhere", "--layout", "flat", "--out",
                                       "{ws}/index.jsonl"), "config", "DIR"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_refused_before_compute_and_writes_nothing(ws, case):
    if case.cpu_only and cuda():
        pytest.skip("a refusal of a machine without a GPU")
    args = [a.format(ws=ws) for a in case.args]
    before = snapshot(ws)
    proc = run_cli(*args, check=False, cwd=ws, timeout=120)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"scaling: invalid {case.kind}: {case.field}: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one message, no echoed YAML source
    assert snapshot(ws) == before, "the refused command changed the workspace"
    assert not (ws / "pwned").exists()


# ----------------------------------------------------------------------------- a runnable default
def test_describe_with_no_arguments_describes_the_default_run(tmp_path):
    proc = run_cli("describe", "--json", cwd=tmp_path, timeout=300)
    info = json.loads(proc.stdout)
    assert info["steps"] == DEFAULT_STEPS and info["samples"] == DEFAULT_STEPS * RunConfig().global_batch
    assert not any(tmp_path.iterdir())


def test_fp16_is_refused_only_where_the_ranks_have_no_gpu():
    """The direct and local launchers ask this machine; a SLURM submission asks its profile."""
    from scaling.config import ConfigError
    from scaling.train.launch import check_precision

    fp16 = RunConfig(precision="fp16")
    check_precision(fp16, gpus=True)  # a profile with gpus_per_node > 0: the ranks have GPUs
    with pytest.raises(ConfigError, match="gpus_per_node=0") as err:
        check_precision(fp16, gpus=False)
    assert err.value.field == "precision"
    for ok in ("auto", "fp32", "bf16"):  # bf16 and fp32 run on a CPU too; auto is fp32 there
        check_precision(RunConfig(precision=ok), gpus=False)
    if not cuda():
        with pytest.raises(ConfigError, match="this machine has none"):
            check_precision(fp16)
