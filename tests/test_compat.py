"""The Optuna private attributes that nas/engine/compat.py relies on still exist and mean what
it expects. When Optuna changes them, this fails first, naming the attribute."""
import optuna
from optuna.trial import TrialState

from nas.engine import compat


def test_storage_and_trial_ids() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    assert hasattr(study, "_storage") and hasattr(trial, "_trial_id"), "Study._storage / Trial._trial_id are gone"
    frozen = compat.frozen(study, trial)
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING
    assert compat.trial_id_of(frozen) == compat.trial_id_of(trial)


def test_fixed_params_of_an_enqueued_trial() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 3})
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert compat.fixed_params(waiting) == {"x": 3}, "enqueue_trial no longer keeps system_attrs['fixed_params']"


def test_fail_trial_sets_attrs_and_state_once() -> None:
    study = optuna.create_study()
    trial = study.ask()
    assert compat.fail_trial(study, compat.frozen(study, trial), {"reason": "gone"})
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == "gone"
    assert not compat.fail_trial(study, failed, {"reason": "again"})  # already finished: refused, not raised


def test_optunas_hypervolume_is_reachable_and_right() -> None:
    # By hand, against (2, 2): (1, 0) dominates [1,2]x[0,2], area 2; (0, 1) dominates
    # [0,2]x[1,2], area 2; they overlap in [1,2]x[1,2], area 1: 3 in all.
    assert compat.hypervolume([[1.0, 0.0], [0.0, 1.0]], [2.0, 2.0]) == 3.0
    assert compat.hypervolume([[3.0, 0.0]], [2.0, 2.0]) == 0.0  # beyond the reference: nothing
