"""Study files: presets load, overrides apply, and every mistake is one line naming key and fix."""
import json
from pathlib import Path

import pytest

from nas.config import StudyConfig, apply_override, constraint_objective, load_config, parse_value, presets
from tests.conftest import tiny_study

TINY = tiny_study(trials=3)


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(TINY)
    return path


def test_quick_preset_is_a_real_study():
    assert "quick" in presets()
    assert all(load_config(name).kind == "study" for name in presets())  # other kinds share the folder
    config = load_config("quick")
    assert config.name == "quick" and config.space.name == "per_layer"
    assert config.trials >= 12
    assert config.data is None  # the shipped corpus
    assert "train" in config.needs


def test_file_and_overrides(study_file):
    config = load_config(study_file, ["trials=40", "budget.tokens=4096", "sampler.name=nsga2",
                                      "constraints.max_params=1e6", 'objectives=["val_loss", "params"]'])
    assert config.trials == 40 and config.budget.tokens == 4096
    assert config.sampler.name == "nsga2"  # a bare word is a string
    assert config.constraints == {"max_params": 1e6}
    assert config.objectives == ("val_loss", "params")
    assert config.study_dir.as_posix() == "studies/tiny"


def test_round_trip_through_json(study_file):
    config = load_config(study_file, ["measure.decode_contexts=[16, 32]"])
    again = StudyConfig.from_json(config.to_json())
    assert again == config
    assert again.measure.decode_contexts == (16, 32)


def test_needs_follow_objectives_and_constraints(study_file):
    assert load_config(study_file, ['objectives=["params", "kv_cache_bytes_per_token"]']).needs == {"costs"}
    with_measure = load_config(study_file, ['objectives=["params", "kv_cache_bytes_per_token"]',
                                            "constraints.min_decode_tokens_per_s=10"])
    assert with_measure.needs == {"costs", "measure"}


@pytest.mark.parametrize("override, expected", [
    ("budget.tokenz=5", "budget.tokenz: unknown key; known keys are ["),
    ("trials=0", "trials: input should be greater than or equal to 1"),
    ("trials=true", "trials: input should be a valid integer"),
    ("budget.tokens=1.5", "budget.tokens: input should be a valid integer"),
    ("budget.lr=-1", "budget: lr=-1.0 must be a positive number"),
    ('objectives=["val_loss"]', "objectives: give 2 to 4 objectives, not 1"),
    ('objectives=["val_loss", "val_loss"]', "names an objective twice"),
    ('objectives=["val_loss", "speed"]', "objective 'speed' is not known; use one of"),
    ('objectives=["val_loss", "probe:nope"]', "unknown probe task"),
    ("sampler.name=cma", "sampler.name: 'cma' is not allowed"),
    ("constraints.max_foo=3", "constraint 'max_foo'"),
    ("constraints.below_params=3", "must be max_<objective> or min_<objective>"),
    ("space.name=nope", "search space 'nope' is not known"),
    ("space.options.colour=1", "unknown option(s) ['colour']"),
    ("resources.gpus_per_trial=-0.5", "resources.gpus_per_trial: input should be greater than or equal to 0"),
    ("name=a b", "'a b' is not a usable study name"),
    ("measure.include=[\"speed\"]", "measure: include=['speed'] must be a non-empty subset"),
    ("mystery=1", "mystery: unknown key; known keys are ["),
])
def test_errors_name_the_key_and_the_fix(study_file, override, expected):
    with pytest.raises(ValueError) as err:
        load_config(study_file, [override])
    message = str(err.value)
    assert expected in message, message
    assert "\n" not in message and message.startswith(str(study_file))


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n')
    message = str(pytest.raises(ValueError, load_config, path).value)
    for key in ("budget: required", "objectives: required", "trials: required"):
        assert key in message


def test_not_a_file_nor_preset_and_bad_toml(tmp_path):
    assert "neither a study file nor a study preset" in str(pytest.raises(ValueError, load_config, "no-such-thing").value)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    assert "not valid TOML" in str(pytest.raises(ValueError, load_config, bad).value)


def test_override_syntax():
    raw = {"budget": {"tokens": 1}}
    apply_override(raw, "budget.tokens=50_000")
    apply_override(raw, "ray.address=127.0.0.1:6379")
    assert raw == {"budget": {"tokens": 50000}, "ray": {"address": "127.0.0.1:6379"}}
    with pytest.raises(ValueError, match="key.path=value"):
        apply_override(raw, "trials")
    with pytest.raises(ValueError, match="budget.tokens is a value, not a section"):
        apply_override(raw, "budget.tokens.x=1")
    assert parse_value("1e-3") == 1e-3 and parse_value("[1, 2]") == [1, 2] and parse_value("tpe") == "tpe"


def test_constraint_names():
    assert constraint_objective("max_kv_cache_bytes_per_token") == ("max", "kv_cache_bytes_per_token")
    assert constraint_objective("min_probe:mqar") == ("min", "probe:mqar")


def test_stored_config_is_plain_json(study_file):
    data = json.loads(load_config(study_file).to_json())
    assert data["budget"]["tokens"] == 2048 and data["storage"] is None


def test_a_config_stored_by_the_old_code_reads_back_the_same():
    """Resuming compares the stored config key by key: the budgets' optimiser fields, now
    inherited from one Optimizer, must serialise to the same flat keys and values."""
    text = (Path(__file__).parent / "fixtures" / "legacy_study" / "config.json").read_text()
    stored, again = json.loads(text), StudyConfig.from_json(text).to_dict()
    for key in ("objectives", "space", "data", "budget", "constraints", "measure", "probe"):
        assert again[key] == stored[key], key
