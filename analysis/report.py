"""Meaning layer: `scaling analyze` — every output of the analysis, and one self-contained report.html.

Writes runs.csv, fits.json, batch_sensitivity.csv/.md, critical_batch.csv, scaling.csv, droptoken.csv,
random_init.csv, the plots (PNG and SVG) and report.html, which embeds the plots and tables and states, for each fit, the data it
used and its uncertainty.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import compare, plots
from analysis.critical import critical_batch, describe_row
from analysis.runs import LoadWarning, load

METRIC_LABEL = {"final_knn_top1": "k-NN top-1 (%)", "final_linear_top1": "linear top-1 (%)"}


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no data_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>no data</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in df.columns) + "</tr>"
                   for _, r in df.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def analyze(paths: list[str | Path], out: str | Path, metric: str = "final_knn_top1", bootstrap: int = 200) -> dict:
    """Run the whole analysis over run/sweep directories into `out`; returns what was written."""
    out = Path(out)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LoadWarning)
        df = load(*paths)
        if df.empty:
            raise ValueError(f"no runs found under {', '.join(map(str, paths))}")
        if metric not in df.columns:
            raise ValueError(f"no metric {metric!r} in the runs; available: "
                             f"{', '.join(c for c in df.columns if c.startswith(('final_', 'best_')))}")
        sens, slopes = compare.batch_sensitivity(df, metric)
        sens_neg, slopes_neg = compare.batch_sensitivity(df, metric, x="contrasted_batch")
        points, fits = compare.model_scaling(df, metric, bootstrap=bootstrap)
        drop = compare.droptoken(df, metric)
        gain = compare.random_init_gain(df, metric)
        critical = critical_batch(df, metric)
    notes += sorted({str(w.message) for w in caught})
    label = METRIC_LABEL.get(metric, metric)

    out.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good: a refusal writes nothing
    written = {}
    df.to_csv(out / "runs.csv", index=False)
    written["runs"] = out / "runs.csv"
    sens.to_csv(out / "batch_sensitivity.csv", index=False)
    ablation = compare.ablation_table(sens)
    (out / "batch_sensitivity.md").write_text(
        f"# Batch sensitivity ({label})\n\nMean over seeds ± half the 95% CI, by global batch:\n\n{_md(ablation)}\n"
        f"Slope per halving of the batch (points of {label}; 95% CI over seeds):\n\n{_md(slopes)}\n"
        f"Slope per halving of the contrasted batch, negatives per positive + 1 (arms with negatives):\n\n"
        f"{_md(slopes_neg)}\n## Critical batch\n\n" + "".join(f"- {describe_row(r)}\n" for _, r in critical.iterrows())
        + f"\n{_md(critical)}")
    critical.to_csv(out / "critical_batch.csv", index=False)
    sens_neg.to_csv(out / "batch_sensitivity_negatives.csv", index=False)
    points.to_csv(out / "scaling.csv", index=False)
    drop.to_csv(out / "droptoken.csv", index=False)
    gain.to_csv(out / "random_init.csv", index=False)
    fairness = compare.fairness(df)
    (out / "fits.json").write_text(json.dumps({"metric": metric, "model_scaling": fits,
                                               "batch_slopes": slopes.to_dict(orient="records"),
                                               "negatives_slopes": slopes_neg.to_dict(orient="records"),
                                               "critical_batch": critical.to_dict(orient="records"),
                                               "fairness": fairness}, indent=2, default=str))
    figures = []
    if not sens.empty:
        figures.append(("Batch sensitivity", plots.batch_sensitivity_plot(sens, label, out, df, metric)[0]))
    if not sens_neg.empty:
        figures.append(("Batch sensitivity against negatives per positive",
                        plots.batch_sensitivity_plot(sens_neg, label, out, df, metric, x="contrasted_batch")[0]))
    if not points.empty:
        figures.append(("Model scaling", plots.model_scaling_plot(points, fits, out)[0]))
    if not drop.empty:
        figures.append(("DropToken frontier", plots.droptoken_plot(drop, label, out)[0]))
    written.update({"fits": out / "fits.json", "batch_sensitivity": out / "batch_sensitivity.csv",
                    "batch_sensitivity_negatives": out / "batch_sensitivity_negatives.csv",
                    "critical_batch": out / "critical_batch.csv",
                    "scaling": out / "scaling.csv", "random_init": out / "random_init.csv", "figures": [p for _, p in figures]})
    (out / "report.html").write_text(_report_html(df, sens, ablation, slopes, fits, drop, gain, fairness, figures,
                                                  notes, label, paths, sens_neg, slopes_neg, critical))
    written["report"] = out / "report.html"
    return written


def _fit_text(name: str, fit: dict) -> str:
    if "skipped" in fit:
        why = fit["skipped"] if fit["skipped"].startswith("not fitted") else f"not fitted — {fit['skipped']}"
        return f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>"
    parts = []
    for p in ("E", "A", "alpha"):
        lo, hi = fit[p]["interval"]
        parts.append(f"{p} = {fit[p]['value']:.4g} [{lo:.4g}, {hi:.4g}]")
    data = fit.get("data", {})
    extra = fit.get("extrapolation", {})
    text = (f"<li><b>{html.escape(name)}</b>: y = E + A·x<sup>−alpha</sup> with y = {html.escape(data.get('y', ''))}, "
            f"x = {html.escape(data.get('x', ''))}; {fit['n_points']} runs (sizes {', '.join(map(str, data.get('sizes', [])))}); "
            f"{'; '.join(parts)} ({fit['alpha']['level']:.0%} bootstrap intervals, resampling model sizes)")
    if extra:
        text += f"; leaving the largest x out, it is predicted within {extra['relative_error']:.1%}"
    if fit.get("warnings"):
        text += "<br><span class=warn>" + html.escape("; ".join(fit["warnings"])) + "</span>"
    return text + "</li>"


ARMS = {
    "vatt": "VATT: contrastive video-audio NCE and video-text MIL-NCE (the official SymmetricNCE)",
    "vatt+asymmetric": ("VATT with the official AsymmetricNCE: both directions of each pair in one joint "
                        "softmax denominator (vatt.loss = asymmetric)"),
    "vatt+sigmoid": ("VATT with SigLIP's pairwise sigmoid loss and its learnable scale and bias "
                     "(vatt.loss = sigmoid): no softmax over the batch"),
    "vatt+cached": ("VATT with GradCache (vatt.negatives = cached): every clip of the optimizer batch is a "
                    "negative, at the memory of one micro-batch"),
    "vatt+sigmoid+cached": "VATT with the sigmoid loss and GradCache's optimizer-batch negatives",
    "vatt+queue": ("VATT with a FIFO queue of past embeddings as extra negatives (vatt.negatives = queue; "
                   "MoCo-style, the queued embeddings are stale by up to queue_size / batch steps)"),
    "vatt+accum": ("VATT with in-batch negatives under gradient accumulation: it contrasts one micro-batch "
                   "(x ranks), fewer clips than its optimizer batch"),
    "dino": "plain DINO: self-distillation with a centred, sharpened EMA teacher, nothing else",
    "simclr": ("SimCLR: NT-Xent between two augmented views of each clip on the same video backbone: "
               "contrastive like VATT, unimodal like DINO (the control arm)"),
    "dino+koleo": ("DINO plus DINOv2's KoLeo term (dino.koleo_weight × the nearest-neighbour entropy estimate "
                   "on the student's global-view CLS features): a different objective from plain DINO, "
                   "reported as its own arm"),
    "koleo": ("the KoLeo term alone (dino.distill_weight = 0): an ablation that tells what KoLeo adds "
              "without self-distillation"),
}


def _report_html(df, sens, ablation, slopes, fits, drop, gain, fairness, figures, notes, label, paths,
                 sens_neg, slopes_neg, critical) -> str:
    states = df["state"].value_counts().to_dict()
    arms = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(ARMS.get(m, m))}</li>"
                   for m in sorted(df["method"].dropna().unique()))
    fair = "".join(f"<li>{html.escape(k)}: {html.escape(', '.join(map(str, v)) if isinstance(v, list) else str(v))}"
                   f"{' (shared by every run)' if isinstance(v, list) and len(v) == 1 else ''}</li>" for k, v in fairness.items())
    figs = "".join(f"<h3>{html.escape(t)}</h3>{_img(p, t)}" for t, p in figures)
    fit_items = "".join(_fit_text(k, v) for k, v in fits.items()) or "<li>no model-scaling fit (one size only)</li>"
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"
    critical_items = "".join(f"<li>{html.escape(describe_row(r))}</li>" for _, r in critical.iterrows()) \
        or "<li>no arm ran two batches</li>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>VATT vs DINO scaling report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{max-width:100%}}.warn{{color:#a40}}</style></head><body>
<h1>VATT vs DINO: scaling report</h1>
<p>{len(df)} runs from {html.escape(', '.join(map(str, paths)))} ({', '.join(f'{n} {s}' for s, n in states.items())}),
analysed {dt.datetime.now().isoformat(timespec='minutes')}. Metric: {html.escape(label)} on held-out clips.</p>
<h2>What the comparison holds fixed</h2>
<p>Both methods train the same video backbone and voxel tokenizer on the same clips and are evaluated with
the same protocol (frozen backbone features; weighted k-NN, k = 20, T = 0.07; a linear probe). What the runs
actually share:</p><ul>{fair}</ul>
<h2>Arms</h2><ul>{arms}</ul>
<h2>Learning against the random-init backbone</h2>
<p>{html.escape(label)} of each trained backbone against the same backbone with random-init weights (same
seeds, same protocol); gain in points with its 95% t-interval over seeds.</p>{_html_table(gain)}
<h2>Batch sensitivity</h2>
<p>Mean over seeds ± half the 95% t-interval. The optimizer batch is the global batch; VATT's negatives
per positive (all-gathered, per micro-step) are shown beside it.</p>
{_html_table(ablation)}
<h3>Per batch</h3><p>retained: the fraction of the arm's largest-batch mean, with a 95% bootstrap
interval over seeds.</p>{_html_table(sens)}
<h3>Slope per halving of the batch</h3><p>Points of {html.escape(label)} gained per halving (negative: lost),
fitted per seed against log2 of the batch; 95% t-interval over seeds.</p>{_html_table(slopes)}
<h3>Against negatives per positive</h3>
<p>The same runs with the contrasted batch (negatives per positive + 1) as the x-axis, for the arms that
have negatives. An arm whose slope follows this axis and not the optimizer batch degrades through its
negatives (compare vatt+accum, with few negatives at a large optimizer batch, and vatt+cached, with many at
the memory of a small one).</p>
{_html_table(sens_neg)}{_html_table(slopes_neg)}
<h3>The measured critical batch</h3>
<p>Per arm, the gradient-noise scale B_simple = tr(&Sigma;) / |G|&sup2; (McCandlish et al. 2018) that the runs
measured in training (gns.every_steps; each run's time average, then the mean over the arm's runs with its
95% t-interval), beside B_95, the batch at which the arm retains 95% of its largest batch's
{html.escape(label)} (interpolated in log2 of the batch; 95% bootstrap interval over seeds; "&lt;=" when no
batch run falls below 95%). They agree when the intervals overlap. At equal samples seen, batches below the
critical batch should train about as well per sample and batches above it worse: an arm that loses accuracy
as its batch shrinks below B_simple is not losing it to gradient noise, and for a contrastive arm the
negatives are the suspect.</p>
<ul>{critical_items}</ul>{_html_table(critical)}
<h2>Model scaling fits</h2><ul>{fit_items}</ul>
<h2>DropToken</h2>{_html_table(drop)}
<h2>Figures</h2>{figs}
<h2>Runs and warnings</h2><ul>{note_items}</ul>
</body></html>
"""
