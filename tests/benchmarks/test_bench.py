"""`scaling bench`: every benchmark runs at its smallest size (so none rots; speeds are not checked),
the harness times cases interleaved, and the CLI writes JSON + markdown and rejects unknown names."""
import json
import logging
import re

import pytest
from clitools import run_cli

from benchmarks import NAMES, run_benchmarks, run_one
from benchmarks.core import Result, interleaved, markdown


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sweep_overhead"])
def test_each_benchmark_runs_at_smoke_scale(name):
    result = run_one(name, "smoke")
    assert result.status == "ok", "\n".join([result.status, *result.notes])
    assert result.rows and all(set(row) <= set(result.columns) for row in result.rows)
    assert result.met is None  # smoke numbers are not judged against the goals


def test_sweep_overhead_runs_at_smoke_scale_on_the_cluster(cluster):
    result = run_one("sweep_overhead", "smoke")
    assert result.status == "ok", "\n".join([result.status, *result.notes])
    assert result.rows


def test_interleaved_alternates_the_order_and_reports_medians():
    calls = []
    cases = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = interleaved(cases, reps=4, warmup=1)
    assert calls[:3] == list("abc")                      # warm-up
    assert calls[3:] == list("abc" "cba" "abc" "cba")    # reversed every other round
    assert set(times) == set("abc") and all(t["reps"] == 4 and t["min"] <= t["median"] <= t["max"]
                                            for t in times.values())
    with pytest.raises(ValueError, match="reps"):
        interleaved(cases, reps=0)


def test_a_failing_benchmark_is_reported_and_the_report_still_renders(monkeypatch):
    import benchmarks.fit_speed as fit_speed

    monkeypatch.setattr(fit_speed, "run", lambda scale: 1 / 0)
    result = run_one("fit_speed", "smoke")
    assert result.status.startswith("error: ZeroDivisionError")
    text = markdown({"scale": "smoke", "date": "d", "commit": None, "command": "c", "seconds": 1.0,
                     "machine": {"cpu": "x", "cores": 2, "gpu": None, "torch": "t", "deepspeed": None},
                     "results": [result.to_dict(), Result("n", "T", "g", ["a"], [{"a": 1.5}], met=False).to_dict()]})
    assert "error: ZeroDivisionError" in text and "goal MISSED" in text and "| 1.5 |" in text


def test_run_benchmarks_logs_its_progress_and_writes_the_report(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="benchmarks")
    results, paths = run_benchmarks(["fit_speed"], "smoke", tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "benchmarks"]
    assert lines[0] == "[bench] fit_speed ..." and re.fullmatch(r"\[bench\] fit_speed: no goal \(\d+\.\d s\)", lines[1])
    assert [r.name for r in results] == ["fit_speed"] and paths["markdown"].is_file()


def test_cli_writes_json_and_markdown(tmp_path):
    proc = run_cli("bench", "fit_speed", "--scale", "smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["scale"] == "smoke" and [r["name"] for r in report["results"]] == ["fit_speed"]
    assert report["machine"]["cores"] >= 1 and report["results"][0]["rows"]
    md = (tmp_path / "bench.md").read_text()
    assert "fit_speed" in md and "| procedure |" in md and md.strip() in proc.stdout


def test_cli_rejects_an_unknown_benchmark_before_running_any(tmp_path):
    proc = run_cli("bench", "fit_speed", "nope", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "fit_speed" in proc.stderr and "sweep_overhead" in proc.stderr
    assert not (tmp_path / "bench.json").exists()
