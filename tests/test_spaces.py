"""One contract, run over every registered space: samples are valid specs that round-trip
through JSON, build, and hash stably."""
import optuna
import pytest

from nas.model import build_model
from search_spaces import SPACES, ArchSpec, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_samples_valid_specs(name):
    space = get_space(name, base={"context": 64, "n_layers": 3})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    hashes = set()
    for _ in range(25):
        trial = study.ask()
        spec = space.sample(trial)
        assert isinstance(spec, ArchSpec)
        assert ArchSpec.from_json(spec.to_json()) == spec
        assert ArchSpec.from_json(spec.to_json()).hash == spec.hash
        hashes.add(spec.hash)
        study.tell(trial, 0.0)
    assert len(hashes) > 3  # the space really varies the design
    build_model(spec)  # the last sample builds


@pytest.mark.parametrize("name", sorted(SPACES))
def test_same_params_give_the_same_spec(name):
    space = get_space(name)
    a = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    spec = space.sample(a)
    replay = optuna.trial.FixedTrial(a.params)
    assert space.sample(replay) == spec


def test_full_space_reaches_every_knob():
    space = get_space("full")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(200):
        t = study.ask()
        for layer in space.sample(t).layers:
            seen |= {k for k in ("qk_rank", "kv_latent", "kv_from", "window") if getattr(layer, k) is not None}
            seen |= {k for k in ("asym_pos", "dconv") if getattr(layer, k)}
            seen.add(layer.attn)
            seen.add(layer.proj)
        study.tell(t, 0.0)
    assert seen >= {"qk_rank", "kv_latent", "kv_from", "window", "asym_pos", "dconv", "none", "mixer",
                    "attention", "qkv", "q_kv", "qk_v", "qkv_single"}


def test_bad_space_options_are_errors():
    with pytest.raises(ValueError, match="search space 'nope' is not known"):
        get_space("nope")
    with pytest.raises(ValueError, match="unknown option"):
        get_space("paper", layers=3)
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=64"):
        get_space("paper", base={"n_heads": 3})
