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

from scaling import schema
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
            self._tell(study, trial, summary, pruned)
        return summary

    def _open(self):
        import optuna

        from sweeps.storage import open_storage, with_retries
        from sweeps.study import make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = with_retries(lambda: optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                                       pruner=make_pruner(self.pruner)))
        # Trial(study, trial_id) is Optuna's public way to reopen a running trial in another process.
        return study, optuna.trial.Trial(study, self.trial_id)

    def _tell(self, study, trial, summary: dict[str, Any], pruned: list[int]) -> None:
        from scaling.train import rundir as rd
        from sweeps.study import finish, mark_cancelled

        reason = summary.get(schema.END_REASON, "")
        if reason == schema.DEADLINE:  # requeued to continue: the trial stays RUNNING
            return
        if reason == schema.CANCELLED:  # `sweep cancel` stopped it: not a failure; the next submit resumes it
            mark_cancelled(study, trial)
            return
        value = summary.get(schema.FINAL, {}).get(self.metric)
        if pruned:
            summary[schema.STOP] = f"pruned at step {pruned[0]}"
            rd.write_json(Path(self.run_dir) / schema.SUMMARY, summary)
            finish(study, trial, "PRUNED", reason=summary[schema.STOP])
        elif reason == schema.COMPLETED and schema.finite_number(value):
            finish(study, trial, "COMPLETE", float(value), reason)
        else:
            finish(study, trial, "FAIL", reason=reason or "no summary")
