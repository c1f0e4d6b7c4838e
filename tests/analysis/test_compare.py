"""Batch sensitivity on a run table with known answers: retained fractions, slopes per halving with
CIs, and the two x-axes (optimizer batch, negatives per positive + 1)."""

import numpy as np
import pandas as pd
import pytest

from analysis.compare import batch_sensitivity


def _runs(rows):
    base = {"size": "nano", "drop_rate": 0.0, "state": "complete", "samples_seen": 4096, "end_reason": "completed"}
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["run"] = [f"r{i}" for i in range(len(df))]
    return df


def _table():
    """An arm that follows its negatives (VATT, in-batch and under accumulation), one that follows
    nothing (DINO), with 3 seeds each and a known per-seed slope."""
    rows = []
    for seed, noise in zip(range(3), (-0.5, 0.0, 0.5)):
        # vatt: metric = 40 + 10 log2(negatives + 1); at batch 8 and 64 without accumulation.
        for batch in (8, 64):
            rows.append({"method": "vatt", "seed": seed, "global_batch": batch, "micro_batch": batch,
                         "negatives_per_positive": batch - 1, "final_knn_top1": 40 + 10 * np.log2(batch) + noise})
        # vatt+accum: optimizer batch 64 with micro-batch 8 contrasts 8 clips: same metric as batch 8.
        for batch in (16, 64):
            rows.append({"method": "vatt+accum", "seed": seed, "global_batch": batch, "micro_batch": 8,
                         "negatives_per_positive": 7, "final_knn_top1": 70 + noise + 0.1 * seed * (batch == 64)})
        for batch in (8, 64):
            rows.append({"method": "dino", "seed": seed, "global_batch": batch, "micro_batch": batch,
                         "negatives_per_positive": None, "final_knn_top1": 50 + noise})
    return _runs(rows)


def test_slope_per_halving_of_the_batch_with_a_ci_over_seeds():
    sens, slopes = batch_sensitivity(_table(), "final_knn_top1")
    vatt = slopes.set_index("method").loc["vatt"]
    assert vatt["slope_per_halving"] == pytest.approx(-10.0)  # 10 points lost per halving
    assert vatt["ci_low"] == pytest.approx(-10.0) and vatt["excludes_zero"]
    dino = slopes.set_index("method").loc["dino"]
    assert dino["slope_per_halving"] == pytest.approx(0.0, abs=1e-9) and not dino["excludes_zero"]
    row = sens.loc[(sens["method"] == "vatt") & (sens["global_batch"] == 8)].iloc[0]
    assert row["retained"] == pytest.approx(70 / 100)
    assert row["retained_ci_low"] < 0.7 < row["retained_ci_high"] < 0.72  # seeds' noise of +-0.5 points
    top = sens.loc[(sens["method"] == "vatt") & (sens["global_batch"] == 64)].iloc[0]
    assert top["retained"] == top["retained_ci_low"] == top["retained_ci_high"] == 1.0


def test_the_negatives_axis_tells_an_arm_that_follows_negatives_from_one_that_follows_the_batch():
    _, by_batch = batch_sensitivity(_table(), "final_knn_top1", x="global_batch")
    sens, by_negatives = batch_sensitivity(_table(), "final_knn_top1", x="contrasted_batch")
    # Under accumulation the optimizer batch changes but the contrasted batch does not: no slope by
    # batch, and a single point (no slope) by negatives.
    accum = by_batch.set_index("method").loc["vatt+accum"]
    assert abs(accum["slope_per_halving"]) < 0.1 and not accum["excludes_zero"]
    assert "vatt+accum" not in set(by_negatives["method"])
    assert set(sens.loc[sens["method"] == "vatt+accum", "contrasted_batch"]) == {8}
    # DINO has no negatives: it is absent from the negatives axis, not given a fake one.
    assert "dino" not in set(sens["method"]) and "dino" not in set(by_negatives["method"])
    assert by_negatives.set_index("method").loc["vatt", "slope_per_halving"] == pytest.approx(-10.0)
    with pytest.raises(ValueError, match="x must be one of"):
        batch_sensitivity(_table(), "final_knn_top1", x="micro_batch")
