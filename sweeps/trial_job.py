"""Many-runs layer: the callable a sweep submits for one trial.

Every task trains (resuming the trial's run directory); only rank 0 talks to the study: it reports
each intermediate evaluation, stops the run when the pruner says so, and tells the study the result.
On requeue submitit calls `checkpoint()`, which resubmits the same trial (TrainJob's).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config import RunConfig
from slurm.jobs import TrainJob


@dataclass
class TrialJob(TrainJob):
    storage: str = ""
    study_name: str = ""
    trial_id: int = -1
    metric: str = "knn_top1"
    pruner: dict = field(default_factory=dict)
    baseline_cache: str = ""  # the sweep's folder of random-init evaluations, shared by its trials

    def run(self, cfg: RunConfig) -> dict[str, Any]:
        from scaling.train.loop import StopRun, train

        study = trial = None
        if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 talks to the storage
            study, trial = self._open()
        pruned: list[int] = []

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(self.metric)
            if trial is None or not isinstance(value, (int, float)):
                return
            trial.report(float(value), step)
            if trial.should_prune():
                pruned.append(step)
                raise StopRun(f"pruned at step {step}")

        summary = train(cfg, self.run_dir, on_eval=on_eval, deadline=self.deadline(),
                        baseline_cache=Path(self.baseline_cache) if self.baseline_cache else None)
        if study is not None:
            self._tell(study, summary, pruned)
        return summary

    def _open(self):
        import optuna

        from sweeps.storage import open_storage, with_retries
        from sweeps.study import make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = with_retries(lambda: optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                                       pruner=make_pruner(self.pruner)))
        return study, optuna.trial.Trial(study, self.trial_id)

    def _tell(self, study, summary: dict[str, Any], pruned: list[int]) -> None:
        from scaling.train import rundir as rd
        from sweeps.spec import is_finite_number
        from sweeps.study import finish

        frozen = study._storage.get_trial(self.trial_id)
        reason = summary.get("end_reason", "")
        if reason == "deadline":  # requeued to continue: the trial stays RUNNING
            return
        if pruned:
            summary["stop"] = f"pruned at step {pruned[0]}"
            rd.write_json(Path(self.run_dir) / rd.SUMMARY, summary)
            finish(study, frozen, "PRUNED", reason=summary["stop"])
        elif reason == "completed" and is_finite_number(summary.get("final", {}).get(self.metric)):
            finish(study, frozen, "COMPLETE", float(summary["final"][self.metric]), reason)
        else:
            finish(study, frozen, "FAIL", reason=reason or "no summary")
