"""A user's own search space and objective: named by import path (or an installed entry point),
imported again in every process from the stored config string, run through a real local Ray;
and the one-line errors of a path that does not import or names the wrong thing."""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nas.config import StudyConfig, load_config
from objectives import OBJECTIVES, get_objective
from search_spaces import SPACES, ArchSpec, get_space, plugins
from tests.conftest import tiny_study

PACKAGE = "qkv_user_plugins"
SPACE = f"{PACKAGE}.spaces:KVHeadsSpace"
OBJECTIVE = f"{PACKAGE}.objectives:attention_share"
BASE = {"context": 32, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "n_layers": 1}

FILES = {
    "__init__.py": "",
    "spaces.py": '''
        from dataclasses import dataclass, field

        from search_spaces import BaseDims, LayerSpec


        @dataclass(frozen=True, kw_only=True)
        class KVHeadsSpace:
            """One question: how many K/V heads every layer has."""
            name = "kv_heads"
            base: BaseDims = field(default_factory=BaseDims)
            kv_heads: tuple[int, ...] = (1, 2, 4)

            def sample(self, trial):
                kv = trial.suggest_categorical("kv_heads", list(self.kv_heads))
                return self.base.spec([LayerSpec(n_kv_heads=kv)] * self.base.n_layers)

            def grid(self):
                return [{"kv_heads": k} for k in self.kv_heads]


        class NoSample:
            def __init__(self, **options):
                pass


        class NotASpec:
            def sample(self, trial):
                return {"layers": []}


        class NoGrid:
            def sample(self, trial):
                return KVHeadsSpace().sample(trial)


        NOT_CALLABLE = 3
    ''',
    "objectives.py": '''
        from objectives import Objective

        attention_share = Objective(
            name="attention_share", direction="minimize", needs=frozenset({"costs"}), unit="fraction",
            description="share of the parameters in the token mixers",
            read=lambda record: record["costs"]["attention_params"] / record["costs"]["params"])

        not_an_objective = "val_loss"
    ''',
    "broken.py": "raise RuntimeError('half-written module')\n",
}


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's package in a folder on sys.path (this process) and PYTHONPATH (Ray's workers)."""
    root = tmp_path / "site"
    (root / PACKAGE).mkdir(parents=True)
    for name, text in FILES.items():
        (root / PACKAGE / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    return root


def study(**changes) -> dict:
    config = {"name": "plug", "objectives": ["val_loss", OBJECTIVE], "trials": 3,
              "space": {"name": SPACE, "options": {"kv_heads": [1, 2, 4], "base": BASE}},
              "budget": {"tokens": 2048, "batch_size": 8, "eval_batches": 2}, "sampler": {"name": "random", "seed": 0}}
    return config | changes


# ---- resolution ------------------------------------------------------------------------------------
def test_a_space_and_an_objective_by_import_path(package: Path) -> None:
    space = get_space(SPACE, kv_heads=[2, 4], base=BASE)
    assert space.kv_heads == (2, 4) and space.base.d_model == 32  # lists and base as the built-in spaces take them
    assert isinstance(space.sample(plugins.FirstChoices()), ArchSpec)
    objective = get_objective(OBJECTIVE)
    assert objective.name == "attention_share" and objective.direction == "minimize"
    config = StudyConfig.from_dict(study(constraints={f"max_{OBJECTIVE}": 0.5}))
    assert config.needs == {"costs", "train"} and config.wanted == ["val_loss", OBJECTIVE, OBJECTIVE]
    assert config.to_dict()["space"]["name"] == SPACE  # what every worker resolves again


def test_an_installed_entry_point_names_a_space_and_an_objective(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = package / f"{PACKAGE}-1.0.dist-info"  # what `pip install` of a package declaring them writes
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[qkvnas.spaces]\nkv_heads = {SPACE}\n\n"
                                           f"[qkvnas.objectives]\nattention_share = {OBJECTIVE}\n")
    plugins.entry_points.cache_clear()
    monkeypatch.setattr(plugins, "entry_points", plugins.entry_points.__wrapped__)  # no stale cache after the test
    assert "kv_heads" in {ep.name for ep in importlib.metadata.entry_points(group="qkvnas.spaces")}
    config = StudyConfig.from_dict(study(objectives=["val_loss", "attention_share"],
                                         space={"name": "kv_heads", "options": {"base": BASE}}))
    assert get_space(config.space.name, **config.space.options).kv_heads == (1, 2, 4)
    assert get_objective("attention_share").unit == "fraction"
    with pytest.raises(ValueError, match=r"search space 'kv_head' is not known; .*an installed one \['kv_heads'\]"):
        get_space("kv_head")


@pytest.mark.parametrize(("space", "message"), [
    ("no_such_package.spaces:S", "module 'no_such_package.spaces' does not import .*install its package or put its "
                                 "folder on PYTHONPATH"),
    (f"{PACKAGE}.spaces:Missing", f"module '{PACKAGE}.spaces' has no 'Missing'; check the name after ':'"),
    (f"{PACKAGE}.broken:S", "importing .*broken' raised RuntimeError: half-written module; fix the module"),
    (f"{PACKAGE}.spaces:NOT_CALLABLE", "names an object of type int, not a space class"),
    (f"{PACKAGE}.spaces:NoSample", "NoSample has no sample\\(trial\\) method"),
    (f"{PACKAGE}.spaces:NotASpec", "sample\\(trial\\) returned a dict, not a search_spaces.ArchSpec"),
    (f"{PACKAGE}.spaces:", "is not an import path; write it as 'package.module:Name'"),
    ("no_such_space", "search space 'no_such_space' is not known; use one of \\['full', 'paper', 'per_layer'\\]"),
])
def test_a_space_that_does_not_resolve_is_one_line_at_load(package: Path, tmp_path: Path, space: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(tiny_study().replace('name = "paper"', f'name = "{space}"'))
    with pytest.raises(ValueError, match=message) as err:
        load_config(path, ["space.options={}"])
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: space: ")


def test_a_finite_user_space_lists_its_designs(package: Path) -> None:
    from search_spaces import enumerate_designs

    designs = enumerate_designs(get_space(SPACE, base=BASE))
    assert [params for params, _ in designs] == [{"kv_heads": 1}, {"kv_heads": 2}, {"kv_heads": 4}]
    assert [spec.layers[0].n_kv_heads for _, spec in designs] == [1, 2, 4]
    with pytest.raises(ValueError, match=r"has no grid\(\) listing its choices; add one to tabulate it"):
        enumerate_designs(get_space(f"{PACKAGE}.spaces:NoGrid"))


def test_space_options_are_checked_against_the_users_class(package: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\]; known: \['base', 'kv_heads'\]"):
        get_space(SPACE, heads=[1])
    with pytest.raises(ValueError, match=r"unknown base option\(s\) \['width'\]"):
        get_space(SPACE, base={"width": 3})
    with pytest.raises(ValueError, match="sample\\(trial\\) raised ValueError: .*fix the space or its options"):
        get_space(SPACE, kv_heads=[3], base=BASE)  # 3 K/V heads do not divide 4 heads


@pytest.mark.parametrize(("objective", "message"), [
    (f"{PACKAGE}.objectives:not_an_objective",
     "names an object of type str, not an objectives.Objective; make it one: Objective\\("),
    (f"{PACKAGE}.objectives:gone", "has no 'gone'"),
    ("nowhere.objectives:x", "module 'nowhere.objectives' does not import"),
])
def test_an_objective_that_does_not_resolve_is_one_line_at_load(package: Path, objective: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^study dict: objectives: objective '{objective}'.* {message}"):
        StudyConfig.from_dict(study(objectives=["val_loss", objective]))
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_dict(study(objectives=["val_loss", "params"], constraints={f"max_{objective}": 1.0}))


def test_a_name_added_to_the_registries_at_run_time_is_refused_before_a_ray_run(
        package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.api import check_portable, run_study

    monkeypatch.setitem(SPACES, "mine", importlib.import_module(f"{PACKAGE}.spaces").KVHeadsSpace)
    monkeypatch.setitem(OBJECTIVES, "share", get_objective(OBJECTIVE))
    config = StudyConfig.from_dict(study(directory=str(tmp_path / "s"), objectives=["val_loss", "share"],
                                         space={"name": "mine", "options": {"base": BASE}}))
    with pytest.raises(ValueError, match="space 'mine' was added to search_spaces.SPACES in this process, which Ray "
                                         "workers do not see; name it by import path"):
        run_study(config, progress=False)
    monkeypatch.delitem(SPACES, "mine")
    with pytest.raises(ValueError, match="objective 'share' was added to objectives.OBJECTIVES .*'qkvnas.objectives'"):
        check_portable(config.with_overrides([f'space.name="{SPACE}"']))


# ---- a real study through a local Ray -----------------------------------------------------------------
RUN = """
import json, sys
sys.path.insert(0, sys.argv[3])  # the user's package: importable here only by this process's sys.path
from nas.api import run_study
from nas.engine import attrs
run = run_study(json.loads(sys.argv[1]), progress=False)
trials = run.trials()
json.dump({"state": list(trials["state"]), "reason": [r or "" for r in trials["reason"]],
           "values": [[float(v) for v in t.values] for t in run.study.trials if t.values],
           "val_loss": [attrs.read(t)["train"]["val_loss"] for t in run.study.trials if t.values],
           "specs": [t.user_attrs.get("spec_json") for t in run.study.trials]}, open(sys.argv[2], "w"))
"""
WORDS = "the cat sat on a mat and the dog ran in the fog while a bird flew over the tree".split()


@pytest.mark.slow
def test_a_study_with_the_users_space_and_objective_runs_on_ray(package: Path, tmp_path: Path) -> None:
    """A driver process that imports the package from a folder on its sys.path runs the study on
    a local Ray: every worker imports the space and the objective itself, from the config string
    it was given (the driver puts the folder on the local workers' PYTHONPATH: nas/api.py). The
    data is a text folder given relative to the driver's working directory, with a BPE the driver
    trains (preflight) and every worker reads from the cache: its bits per byte are reported."""
    from nas.costs import costs
    from nas.data import DataSource, load_corpus

    work = tmp_path / "work"
    (work / "corpus").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "val"):
        (work / "corpus" / f"{name}.txt").write_text(" ".join(rng.choice(WORDS, 6000)))
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    others = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and p != str(package)]
    env |= {"PYTHONPATH": os.pathsep.join(others)} if others else {}
    config = study(directory=str(work / "studies" / "plug"), objectives=["bits_per_byte", OBJECTIVE],
                   data={"path": "corpus", "tokenizer": "bpe:300"},
                   space={"name": SPACE, "options": {"kv_heads": [1, 2, 4], "base": BASE | {"vocab_size": 300}}})
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(config), str(work / "out.json"), str(package)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((work / "out.json").read_text())
    assert out["state"] == ["COMPLETE"] * 3, out["reason"]
    for values, spec_json in zip(out["values"], out["specs"]):
        spec = ArchSpec.from_json(spec_json)
        c = costs(spec)
        assert values[1] == pytest.approx(c.attention_params / c.params)  # the user's objective, computed in a worker
        assert spec.d_model == 32 and spec.layers[0].n_kv_heads in (1, 2, 4)
    assert len({v[1] for v in out["values"]}) == 3  # three designs of the user's space
    (cached,) = (work / "corpus" / ".qkvnas-cache").glob("bpe300-*.json")  # trained once, by the driver
    corpus = load_corpus(DataSource(path=str(work / "corpus"), tokenizer="bpe:300"))
    assert corpus.tokenizer == str(cached) and 1.5 < corpus.bytes_per_token < 6
    for values, val_loss in zip(out["values"], out["val_loss"]):
        assert values[0] == pytest.approx(val_loss / math.log(2) / corpus.bytes_per_token)
