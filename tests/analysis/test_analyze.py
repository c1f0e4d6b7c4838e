"""`scaling analyze` and the notebooks, on a real sweep the test produces (tiny runs, in process)."""
import json
import re
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from clitools import run_cli
from nbclient import NotebookClient
from sweeptools import FIXED

from analysis.runs import LoadWarning, load

NOTEBOOKS = Path(__file__).resolve().parents[2] / "analysis" / "notebooks"
SPEC = {
    "name": "analysis_fixture",
    "fixed": {**FIXED, "eval.linear_probe": False},
    # No accumulation (micro = global batch): VATT's negatives follow its batch, so it stays one arm
    # (in-batch negatives under accumulation are the arm vatt+accum).
    # DINO measures its noise scale (gns), which needs two batch sizes: micro-batch half the global.
    "grid": [{"method": ["vatt"], "global_batch": [4], "micro_batch": [4], "seed": [0, 1]},
             {"method": ["vatt"], "global_batch": [8], "micro_batch": [8], "seed": [0, 1]},
             {"method": ["dino"], "global_batch": [4], "micro_batch": [2], "seed": [0, 1], "gns.every_steps": [1]},
             {"method": ["dino"], "global_batch": [8], "micro_batch": [4], "seed": [0, 1], "gns.every_steps": [1]},
             {"method": ["vatt", "dino"], "size": ["micro"], "micro_batch": [8]},
             {"method": ["vatt"], "drop_rate": [0.5], "micro_batch": [8]},
             {"method": ["dino"], "dino.koleo_weight": [0.5], "global_batch": [8]}],
    "launcher": {"type": "debug"},
}


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("analysis")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "dir": str(root / "sweep")}))
    run_cli("sweep", "submit", str(spec), timeout=1200)
    return root / "sweep"


def test_load_gives_one_row_per_run_with_axes_costs_metrics_and_state(sweep):
    df = load(sweep)
    assert len(df) == 12
    assert set(df["state"]) == {"complete"} and set(df["trial_state"]) == {"COMPLETE"}
    for col in ("method", "size", "drop_rate", "global_batch", "seed", "params", "total_flops", "samples_seen",
                "final_knn_top1", "best_knn_top1", "final_loss", "wall_s"):
        assert df[col].notna().all(), col
    assert (df.loc[df["size"] == "micro", "params"].min() > df.loc[df["size"] == "nano", "params"].max())
    # DINO with KoLeo on is its own arm, never pooled with plain DINO.
    koleo = df.loc[df["method"] == "dino+koleo"]
    assert len(koleo) == 1 and koleo["dino.koleo_weight"].tolist() == [0.5]
    assert (df.loc[df["method"] == "dino", "dino.koleo_weight"] == 0).all()
    assert df.loc[df["method"] == "vatt", "dino.koleo_weight"].isna().all()
    # The measured noise scale: DINO's runs measured it at each of their 4 steps, VATT's did not.
    dino = df.loc[(df["method"] == "dino") & (df["size"] == "nano")]
    assert len(dino) == 4 and (dino["gns_measurements"] == 4).all()
    assert dino["b_simple_mean"].map(lambda v: v == v).all() and dino["b_simple_mean_se"].notna().all()
    assert df.loc[df["method"] == "vatt", "b_simple_mean"].isna().all()


def test_analyze_writes_every_output_and_a_self_contained_report(sweep, tmp_path):
    out = tmp_path / "report"
    printed = run_cli("analyze", str(sweep), "--out", str(out), "--bootstrap", "20").stdout
    assert f"report: {out / 'report.html'}" in printed
    for name in ("runs.csv", "fits.json", "batch_sensitivity.csv", "batch_sensitivity.md", "scaling.csv",
                 "batch_sensitivity.png", "batch_sensitivity.svg", "model_scaling.png", "model_scaling.svg",
                 "droptoken.png", "droptoken.svg", "random_init.csv", "report.html",
                 "batch_sensitivity_negatives.csv", "batch_sensitivity_negatives.png", "critical_batch.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4 and all(len(i) > 1000 for i in images)
    for heading in ("What the comparison holds fixed", "Arms", "Learning against the random-init backbone",
                    "Batch sensitivity", "Against negatives per positive",
                    "Slope per halving", "The measured critical batch", "Model scaling fits", "DropToken"):
        assert heading in page
    fits = json.loads((out / "fits.json").read_text())
    critical = {r["method"]: r for r in fits["critical_batch"] if r["size"] == "nano" and r["drop_rate"] == 0}
    assert critical["dino"]["runs_measured"] == 4 and critical["dino"]["batches"] == [4, 8]
    assert critical["vatt"]["runs_measured"] == 0
    assert "dino nano: measured critical batch B_simple" in page
    assert set(fits["model_scaling"]) == {f"{arm}:{axis}" for arm in ("vatt", "dino", "dino+koleo")
                                          for axis in ("params", "total_flops")}
    assert "skipped" in fits["model_scaling"]["dino+koleo:params"]  # one size: nothing to fit
    assert fits["fairness"]["dino+koleo: dino.koleo_weight"] == [0.5]
    assert "DINO plus DINOv2&#x27;s KoLeo term" in page

    # Each arm against its random-init backbone: the gain is trained minus random init, per seed.
    gain = pd.read_csv(out / "random_init.csv")
    runs = load(sweep)
    row = gain.loc[(gain["method"] == "vatt") & (gain["size"] == "nano") & (gain["drop_rate"] == 0)
                   & (gain["global_batch"] == 8)].iloc[0]
    same = runs.loc[(runs["method"] == "vatt") & (runs["size"] == "nano") & (runs["drop_rate"] == 0)
                    & (runs["global_batch"] == 8)]
    assert row["seeds"] == 2
    assert row["gain"] == pytest.approx((same["final_knn_top1"] - same["random_init_knn_top1"]).mean())
    assert row["gain_ci_low"] <= row["gain"] <= row["gain_ci_high"]
    assert set(gain["method"]) == {"vatt", "dino", "dino+koleo"}
    # Two sizes for a 3-parameter law: not identified, so no exponent, interval or curve; the report
    # and the plot's legend say so.
    vatt = fits["model_scaling"]["vatt:params"]
    assert "alpha" not in vatt and vatt["skipped"] == "not fitted: 2 sizes, the law needs at least 3"
    assert vatt["data"]["sizes"] == ["micro", "nano"]
    assert "not fitted: 2 sizes, the law needs at least 3" in page
    assert "not fitted: 2 sizes" in (out / "model_scaling.svg").read_text()
    assert "| batch 4 | batch 8 |" in (out / "batch_sensitivity.md").read_text()


def test_edge_cases_warn_or_fail_clearly(sweep, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("analyze", str(empty), "--out", str(tmp_path / "o1"), check=False)
    assert proc.returncode == 2 and "no runs found" in proc.stderr
    proc = run_cli("analyze", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"), check=False)
    assert proc.returncode == 2 and "no such run or sweep directory" in proc.stderr
    proc = run_cli("analyze", str(sweep), "--out", str(tmp_path / "o3"), "--metric", "final_accuracy", check=False)
    assert proc.returncode == 2 and "no metric 'final_accuracy'" in proc.stderr and "final_knn_top1" in proc.stderr

    # A single run, and a run whose metric is NaN: analysed, with the reasons stated.
    runs = sorted((sweep / "trials").iterdir())
    single = tmp_path / "single"
    shutil.copytree(runs[0], single / runs[0].name)
    run_cli("analyze", str(single), "--out", str(tmp_path / "o4"), "--bootstrap", "5")
    assert (tmp_path / "o4" / "report.html").is_file()
    broken = tmp_path / "broken"
    shutil.copytree(sweep / "trials", broken)
    victim = sorted(broken.iterdir())[0] / "summary.json"
    summary = json.loads(victim.read_text())
    summary["final"]["knn_top1"] = float("nan")
    victim.write_text(json.dumps(summary))
    with pytest.warns(LoadWarning, match="knn_top1 is missing or not finite"):
        from analysis.compare import batch_sensitivity

        batch_sensitivity(load(broken), "final_knn_top1")
    run_cli("analyze", str(broken), "--out", str(tmp_path / "o5"), "--bootstrap", "5")
    assert "missing or not finite" in (tmp_path / "o5" / "report.html").read_text()


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_the_notebooks_run_headless_on_the_sweep(sweep, notebook, monkeypatch):
    monkeypatch.setenv("SCALING_SWEEP", str(sweep))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("12 runs" in "".join(o.get("text", "")) for o in outputs)


def test_each_objective_is_its_own_arm():
    from analysis.runs import arm

    assert arm({"method": "vatt", "dino": {"koleo_weight": 1.0}}) == "vatt"
    assert arm({"method": "dino", "dino": {"koleo_weight": 0.0, "distill_weight": 1.0}}) == "dino"
    assert arm({"method": "dino", "dino": {"koleo_weight": 1.0, "distill_weight": 1.0}}) == "dino+koleo"
    assert arm({"method": "dino", "dino": {"koleo_weight": 1.0}}) == "dino+koleo"  # written before distill_weight
    assert arm({"method": "dino", "dino": {"koleo_weight": 1.0, "distill_weight": 0.0}}) == "koleo"
    assert arm({"method": "vatt", "vatt": {"loss": "nce"}}) == "vatt"
    assert arm({"method": "vatt", "vatt": {"loss": "asymmetric"}}) == "vatt+asymmetric"
    assert arm({"method": "vatt", "vatt": {"loss": "sigmoid", "negatives": "cached"}}) == "vatt+sigmoid+cached"
    assert arm({"method": "vatt", "vatt": {"negatives": "queue"}}) == "vatt+queue"
    # In-batch negatives under accumulation contrast fewer clips than the optimizer batch: own arm.
    assert arm({"method": "vatt", "global_batch": 64}, negatives_per_positive=7) == "vatt+accum"
    assert arm({"method": "vatt", "global_batch": 64}, negatives_per_positive=63) == "vatt"
    assert arm({"method": "vatt", "global_batch": 64, "vatt": {"negatives": "cached"}}, 63) == "vatt+cached"
    assert arm({"method": "vatt", "vatt": {"loss": "sigmoid"}}) == "vatt+sigmoid"
    assert arm({"method": "vatt"}) == "vatt"  # written before vatt.loss
