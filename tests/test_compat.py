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


def test_constraints_as_the_list_optuna_and_optuna_dashboard_read() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    compat.set_constraints(study, trial, [0.5, -1.0])
    study.tell(trial, [1.0, 1.0])
    stored = study.trials[0]
    assert stored.system_attrs[compat.CONSTRAINTS_KEY] == [0.5, -1.0], "Optuna's constraints list attribute moved"
    assert stored.constraints == {"0": 0.5, "1": -1.0}, "Optuna no longer reads the list form of constraints"
    assert study.best_trials == []  # infeasible: off Optuna's own front
    added = optuna.trial.create_trial(values=[1.0, 1.0], system_attrs=compat.constraint_system_attrs([-0.1]))
    assert added.constraints == {"0": -0.1}
    try:
        from optuna_dashboard._serializer import CONSTRAINTS_KEY, serialize_frozen_trial
    except ImportError:  # optuna-dashboard is optional: Optuna's side is checked above
        return
    assert CONSTRAINTS_KEY == compat.CONSTRAINTS_KEY
    assert serialize_frozen_trial(study._study_id, stored, {})["constraints"] == [0.5, -1.0]


def test_a_trial_system_attribute_stays_out_of_what_the_cli_prints() -> None:
    study = optuna.create_study()
    trial = study.ask()
    compat.set_trial_system_attr(study, trial, "qkvnas:test", {"curve": [1, 2, 3]})
    study.tell(trial, 1.0)
    assert study.trials[0].system_attrs["qkvnas:test"] == {"curve": [1, 2, 3]} and not study.trials[0].user_attrs
    frame = study.trials_dataframe(attrs=("number", "value", "user_attrs"))  # the columns `optuna trials` prints
    assert not any("qkvnas" in str(column) for column in frame.columns)


def test_optunas_hypervolume_history_is_reachable() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    for values in ([2.0, 3.0], [1.0, 1.0], [3.0, 0.5]):
        study.add_trial(optuna.trial.create_trial(values=values))
    numbers, values = compat.hypervolume_history(study.trials, study.directions, [4.0, 0.0])
    assert numbers == [0, 1, 2] and values == [6.0, 7.0, 7.0], "optuna.visualization._hypervolume_history changed"


def test_count_trials_matches_a_listing_on_sqlite_and_in_memory(tmp_path) -> None:
    from nas.engine.storage import open_storage

    for storage in (open_storage(f"sqlite:///{tmp_path / 'c.db'}"), None):
        study = optuna.create_study(storage=storage)
        for x in range(5):
            study.enqueue_trial({"x": x})
        study.tell(study.ask(), 1.0)  # pops a queued trial
        study.ask()  # another one, left running
        counted = {s: compat.count_trials(study, (s,)) for s in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)}
        assert counted == {TrialState.WAITING: 3, TrialState.RUNNING: 1, TrialState.COMPLETE: 1}
        assert compat.count_trials(study, (TrialState.WAITING, TrialState.COMPLETE)) == 4
