"""The critical-batch readout on a run table with known answers: B_95 by log-interpolation, its
bootstrap interval, the measured B_simple pooled over runs, and the agreement verdict."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.critical import b_threshold, critical_batch, describe_row


def _runs(rows):
    base = {"size": "nano", "drop_rate": 0.0, "state": "complete", "end_reason": "completed"}
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["run"] = [f"r{i}" for i in range(len(df))]
    return df


def test_b95_interpolates_in_log_batch_walking_down_from_the_largest():
    batches = np.array([16, 32, 64, 128])
    # Retained 0.7, 0.9, 1.0, 1.0: crossing 0.95 half-way (in log2) between 32 and 64.
    b, bound = b_threshold(batches, np.array([70.0, 90.0, 100.0, 100.0]))
    assert b == pytest.approx(2 ** 5.5) and not bound
    # A dip that recovers below does not move the crossing: the first fall, from the top, counts.
    b, _ = b_threshold(batches, np.array([99.0, 90.0, 100.0, 100.0]))
    assert b == pytest.approx(2 ** 5.5)
    # Never below 95% (DINO at equal samples, better at small batches): at most the smallest batch.
    b, bound = b_threshold(batches, np.array([110.0, 105.0, 101.0, 100.0]))
    assert b == 16 and bound


def _table():
    rows = []
    for seed, noise in zip(range(3), (-0.3, 0.0, 0.3)):
        for batch, metric in ((16, 70.0), (32, 90.0), (64, 100.0), (128, 100.0)):
            # vatt: drops below 64; its measured noise scale is about 20 (well below the drop).
            rows.append({"method": "vatt", "seed": seed, "global_batch": batch, "final_knn_top1": metric + noise,
                         "b_simple_mean": 20.0 + seed, "b_simple_mean_se": 2.0, "b_simple_final": 25.0})
            # dino: flat, and unmeasured.
            rows.append({"method": "dino", "seed": seed, "global_batch": batch, "final_knn_top1": 50.0 + noise})
    return _runs(rows)


def test_the_readout_gives_both_batches_with_intervals_and_a_verdict():
    rows = critical_batch(_table())
    table = rows.set_index("method")
    vatt = table.loc["vatt"]
    assert vatt["b95"] == pytest.approx(2 ** 5.5, rel=0.02)
    assert vatt["b95_ci_low"] < vatt["b95"] < vatt["b95_ci_high"] < 64
    assert vatt["b_simple"] == pytest.approx(21.0) and vatt["runs_measured"] == 12
    assert vatt["b_simple_ci_low"] < 21 < vatt["b_simple_ci_high"] < 22  # t-interval over 12 runs
    assert vatt["b_simple_final"] == pytest.approx(25.0)
    assert not vatt["agree"] and vatt["agree"] is not None
    line = describe_row(rows.loc[rows["method"] == "vatt"].iloc[0])
    assert "B_simple 21 (95% CI" in line and "B_95 45" in line and "disagree" in line
    dino = table.loc["dino"]
    assert dino["b95"] == 16 and dino["b95_upper_bound_only"] and dino["b95_ci_low"] == 0.0
    assert math.isnan(dino["b_simple"]) and dino["runs_measured"] == 0 and dino["agree"] is None
    assert "keeps 95% of its largest batch's metric at every batch run" in describe_row(
        rows.loc[rows["method"] == "dino"].iloc[0])


def test_they_agree_when_the_intervals_overlap():
    df = _table()
    df.loc[df["method"] == "vatt", "b_simple_mean"] = 45.0 + df.loc[df["method"] == "vatt", "seed"]
    vatt = critical_batch(df).set_index("method").loc["vatt"]
    assert bool(vatt["agree"])


def test_one_measured_run_uses_its_own_standard_error():
    df = _table()
    df.loc[df.index[2:], "b_simple_mean"] = np.nan  # only the first vatt run measured
    vatt = critical_batch(df).set_index("method").loc["vatt"]
    assert vatt["runs_measured"] == 1 and vatt["b_simple"] == 20.0
    assert vatt["b_simple_ci_high"] - vatt["b_simple"] == pytest.approx(1.959964 * 2.0, rel=1e-5)


def test_a_negative_noise_scale_is_reported_as_not_identified():
    df = _table()
    df.loc[df["method"] == "vatt", "b_simple_mean"] = -30.0 + df.loc[df["method"] == "vatt", "seed"]
    rows = critical_batch(df)
    vatt = rows.loc[rows["method"] == "vatt"].iloc[0]
    assert math.isnan(vatt["b_simple"]) and vatt["runs_measured"] == 12 and vatt["agree"] is None
    assert "not identified" in describe_row(vatt) and "-29" in describe_row(vatt)
