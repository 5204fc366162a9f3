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


@pytest.mark.parametrize("name, options, message", [
    ("paper", {"projs": ["qkvx"]}, "option projs: 'qkvx' is not known"),
    ("paper", {"projs": "qkv"}, "projs='qkv' must be a non-empty list"),
    ("per_layer", {"kv_sharing": ["gqa3"]}, r"'gqa3' asks for 3 K/V heads, which does not divide n_heads=4; "
                                            r"use some of \['mha', 'mqa', 'gqa2'\]"),
    ("paper", {"kv_sharing": ["mha", "mha"]}, "more than once"),
    ("full", {"kv_sharing": ["gqa4"]}, r"does not divide every n_heads in \[2, 4\]"),
    ("full", {"mixers": ["attn"]}, "option mixers: 'attn' is not known"),
    ("full", {"d_models": [64, 30]}, "d_model=30 with n_heads=2"),
    ("full", {"rank_fractions": [1.0]}, "strictly between 0 and 1"),
    ("full", {"n_layers_range": [0, 2]}, "n_layers_range"),
])
def test_space_options_that_cannot_be_sampled_are_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_space(name, **options)


def test_kv_sharing_equal_to_the_heads_keeps_its_fallback():
    # gqa2 with two heads: the documented fallback to one K/V head (test_table), still accepted.
    space = get_space("paper", base={"n_heads": 2, "d_model": 32, "ffn_dim": 64})
    assert space.sample(optuna.trial.FixedTrial({"proj": "qkv", "kv_sharing": "gqa2"})).layers[0].n_kv_heads == 1
