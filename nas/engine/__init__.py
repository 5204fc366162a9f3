"""The engine: one owner of a run's lifecycle, under studies, ladders and probe suites.

    job (nas/engine/job.py) ──► run(job) (lifecycle.py): storage + lock (storage.py), stale trials
        (recovery.py), rounds on Ray Tune (tune.py, the only module importing ray) or in this
        process (local.py), the driver's half of each trial (trials.py), the record told to
        Optuna (record.py), the progress display (progress.py), samplers (sampler.py);
        Optuna private attributes behind compat.py.
"""
from nas.engine.job import BaseJob, Job, Payload, Record, Report, Resources, no_report
from nas.engine.lifecycle import EngineRun, Executor, run

__all__ = ["BaseJob", "EngineRun", "Executor", "Job", "Payload", "Record", "Report", "Resources", "no_report", "run"]
