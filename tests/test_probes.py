"""Probe tasks: generators (determinism, disjoint splits, answers checked by independent
reference solvers), the masked metric, training on a probe, the preset suite and the CLI."""
from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest

from nas.common import torch_threads
from nas.probing import ProbeBudget, adapt_spec, run_probe
from objectives.probes import CAUSAL_TASKS, PROBE_TASKS, SYNTHETIC_TASK_NAMES, ProbeSplit, get_probe
from objectives.probes.reachability import PROMPT, PathSplit
from search_spaces.spec import ArchSpec, uniform
from search_spaces.variants import variant

# Small sizes so every generator runs in milliseconds.
SMALL: dict[str, dict] = {
    "mqar": {"vocab_size": 32, "length": 24, "n_pairs": 3},
    "induction": {"vocab_size": 16, "length": 20},
    "khop": {"n_symbols": 4, "length": 24, "k": 3},
    "reachability": {"n_nodes": 40, "edge_prob": 0.12, "length": 12},
    **{name: {"length": 12} for name in SYNTHETIC_TASK_NAMES},
}
TINY = ArchSpec(vocab_size=256, context=32, d_model=32, n_heads=2, ffn_dim=64, pos="learned", layers=uniform(2))
FAST = ProbeBudget(steps=8, batch_size=8, n_test=32)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread (two spin against each other on a busy 2-core machine)."""
    with torch_threads(1):
        yield


def small(name: str, seed: int = 0, n_train: int = 200, n_test: int = 100) -> tuple[ProbeSplit, ProbeSplit]:
    return get_probe(name, **SMALL[name]).split(seed=seed, n_train=n_train, n_test=n_test)


def test_registry_lists_every_task() -> None:
    assert set(PROBE_TASKS) == {"mqar", "induction", "khop", "reachability", "reverse", "sort", "sub", "swap", "copy"}
    assert set(CAUSAL_TASKS) == {"mqar", "induction", "khop", "reachability"}


# ---- generators ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROBE_TASKS)
def test_generator_is_deterministic_per_seed(name: str) -> None:
    a_train, a_test = small(name, seed=3)
    b_train, b_test = small(name, seed=3)
    c_train, _ = small(name, seed=4)
    for a, b in ((a_train, b_train), (a_test, b_test)):
        for field in ("inputs", "targets", "mask"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a_train.inputs, c_train.inputs)


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_train_and_test_never_overlap(name: str) -> None:
    probe = get_probe(name, **SMALL[name])
    train, test = probe.split(seed=0, n_train=2000, n_test=200)
    train_keys = set(probe.example_keys(train))
    assert train_keys.isdisjoint(probe.example_keys(test))
    if name != "reachability":  # there the key is the (source, target) pair, checked below
        assert {r.tobytes() for r in train.inputs}.isdisjoint(r.tobytes() for r in test.inputs)


def test_split_removes_test_examples_from_training() -> None:
    # length 3 over 10 digits: only 1000 sequences, so 2000 draws would repeat test ones
    probe = get_probe("copy", length=3)
    train, test = probe.split(seed=0, n_train=2000, n_test=300)
    assert len(train) == 2000
    assert {r.tobytes() for r in train.inputs}.isdisjoint(r.tobytes() for r in test.inputs)


def test_split_with_too_few_distinct_examples_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="longer"):
        get_probe("copy", length=2).split(seed=0, n_train=10, n_test=5000)  # the test set takes all 100


@pytest.mark.parametrize("name", PROBE_TASKS)
def test_shapes_vocab_and_queried_positions(name: str) -> None:
    probe = get_probe(name, **SMALL[name])
    train, test = small(name)
    for split in (train, test):
        assert split.inputs.shape[1] == probe.length and split.inputs.dtype == np.int64
        assert split.inputs.min() >= 0 and split.inputs.max() < probe.vocab_size
        assert split.targets[split.mask].max() < probe.vocab_size
        assert split.mask.any(axis=1).all()


def test_synthetic_answers() -> None:
    for name, solve in {
        "reverse": lambda row: row[::-1],
        "sort": sorted,
        "sub": lambda row: [9 - v for v in row],
        "swap": lambda row: list(row[6:]) + list(row[:6]),
        "copy": list,
    }.items():
        split, _ = small(name)
        assert split.mask.all()
        for row, target in zip(split.inputs[:50], split.targets[:50]):
            assert list(target) == list(solve(list(row))), name
        assert split.inputs.min() >= 0 and split.inputs.max() <= 9


def test_swap_needs_an_even_length() -> None:
    with pytest.raises(ValueError, match="even"):
        get_probe("swap", length=7)


def test_mqar_answers_by_explicit_lookup() -> None:
    probe = get_probe("mqar", **SMALL["mqar"])
    train, _ = small("mqar")
    n_pairs, half = probe.n_pairs, probe.vocab_size // 2
    for row, target, mask in zip(train.inputs, train.targets, train.mask):
        binding = {int(row[2 * i]): int(row[2 * i + 1]) for i in range(n_pairs)}
        assert len(binding) == n_pairs and all(0 < k < half <= v for k, v in binding.items())
        queried = [t for t in range(len(row)) if mask[t]]
        assert sorted(int(row[t]) for t in queried) == sorted(binding)  # every key asked exactly once
        assert all(t >= 2 * n_pairs for t in queried)
        for t in queried:
            assert target[t] == binding[int(row[t])] == row[t + 1]


def test_induction_answers_by_scanning_back() -> None:
    train, _ = small("induction")
    for row, target, mask in zip(train.inputs, train.targets, train.mask):
        assert mask.nonzero()[0].tolist() == [len(row) - 1]
        last = int(row[-1])
        earlier = [t for t in range(len(row) - 1) if row[t] == last]
        assert len(earlier) == 1  # the answer is unambiguous
        assert target[-1] == row[earlier[0] + 1]


def _khop_reference(row: list[int], i: int, k: int) -> int | None:
    """Sanford et al.'s hop_k by the definition, one position at a time."""
    pos = i
    for _ in range(k):
        matches = [j for j in range(pos) if row[j] == row[pos]]
        if not matches:
            return None
        pos = matches[-1] + 1
    return row[pos]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_khop_answers_by_the_definition(k: int) -> None:
    split, _ = get_probe("khop", n_symbols=3, length=16, k=k).split(seed=1, n_train=100, n_test=10)
    for row, target, mask in zip(split.inputs.tolist(), split.targets, split.mask):
        for i in range(len(row)):
            answer = _khop_reference(row, i, k)
            assert mask[i] == (answer is not None)
            if answer is not None:
                assert target[i] == answer


def _bfs_reachable(adjacency: np.ndarray, s: int) -> set[int]:
    seen, todo = set(), deque([s])
    while todo:
        u = todo.popleft()
        for v in np.flatnonzero(adjacency[u]):
            if int(v) not in seen:
                seen.add(int(v))
                todo.append(int(v))
    return seen


def test_reachability_paths_and_held_out_pairs_by_bfs() -> None:
    probe = get_probe("reachability", **SMALL["reachability"])
    train, test = probe.split(seed=0, n_train=500, n_test=1000)
    assert isinstance(test, PathSplit)
    adjacency = test.adjacency
    assert not np.tril(adjacency).any()  # a DAG: edges go from lower to higher ids
    for split in (train, test):
        for row, target, mask in zip(split.inputs, split.targets, split.mask):
            s, t = int(row[0]), int(row[1])
            assert t in _bfs_reachable(adjacency, s)
            path = [int(v) for v in row[2:] if v != probe.pad]
            assert path[0] == s and path[-1] == t
            assert all(adjacency[u, v] for u, v in zip(path, path[1:]))
            assert mask.nonzero()[0].tolist() == list(range(2, 1 + len(path)))
            assert list(target[mask]) == path[1:]
    train_pairs = {tuple(r[:2]) for r in train.inputs.tolist()}
    test_pairs = {tuple(r[:2]) for r in test.inputs.tolist()}
    assert train_pairs.isdisjoint(test_pairs)
    assert all(not adjacency[s, t] for s, t in test_pairs)  # held-out pairs need more than one edge


def test_every_edge_is_a_training_pair_and_test_pairs_are_the_rest() -> None:
    from objectives.probes.reachability import random_dag

    probe = get_probe("reachability", **SMALL["reachability"])
    rng = np.random.default_rng(0)
    adjacency = random_dag(rng, probe.n_nodes, probe.edge_prob)
    train_pairs, test_pairs = probe.pairs(adjacency, rng)
    train_set, test_set = {tuple(p) for p in train_pairs.tolist()}, {tuple(p) for p in test_pairs.tolist()}
    edges = {tuple(e) for e in np.argwhere(adjacency).tolist()}
    reachable_pairs = {(s, t) for s in range(probe.n_nodes) for t in _bfs_reachable(adjacency, s)}
    assert edges <= train_set and train_set.isdisjoint(test_set)
    assert train_set | test_set <= reachable_pairs
    assert 0.1 < len(test_set) / len(reachable_pairs - edges) < 0.3  # test_frac 0.2 of the non-edges


# ---- the metric ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in PROBE_TASKS if n != "reachability"])
def test_metric_counts_only_queried_positions(name: str) -> None:
    probe = get_probe(name, **SMALL[name])
    _, test = small(name)
    perfect = lambda inputs: test.targets.copy()  # noqa: E731
    assert probe.score(test, perfect) == 1.0
    rng = np.random.default_rng(0)
    noise = rng.integers(0, probe.vocab_size, test.targets.shape)
    scrambled_outside = np.where(test.mask, test.targets, noise)
    assert probe.score(test, lambda inputs: scrambled_outside) == 1.0
    wrong_inside = np.where(test.mask, (test.targets + 1) % probe.vocab_size, test.targets)
    assert probe.score(test, lambda inputs: wrong_inside) == 0.0
    half = test.mask & (rng.random(test.mask.shape) < 0.5)
    partly = np.where(half, (test.targets + 1) % probe.vocab_size, test.targets)
    assert probe.score(test, lambda inputs: partly) == pytest.approx(1 - half.sum() / test.mask.sum())


def _path_oracle(probe, adjacency: np.ndarray):
    """A predictor that always names a neighbour from which the target is still reachable."""
    def predict(seq: np.ndarray) -> np.ndarray:
        out = np.full(seq.shape, probe.pad)
        for r, row in enumerate(seq):
            t = int(row[1])
            for p in range(PROMPT - 1, seq.shape[1]):
                u = int(row[p])
                if u in (probe.pad, t):
                    break
                out[r, p] = next(int(v) for v in np.flatnonzero(adjacency[u])
                                 if int(v) == t or t in _bfs_reachable(adjacency, int(v)))
        return out
    return predict


def test_reachability_score_checks_generated_paths() -> None:
    probe = get_probe("reachability", **SMALL["reachability"])
    _, test = probe.split(seed=0, n_train=10, n_test=1000)
    oracle = _path_oracle(probe, test.adjacency)
    best = probe.score(test, oracle)
    assert best > 0.9  # a valid greedy path may run longer than the sequence: not always 1
    # the prompt's positions are never read: changing those predictions changes nothing
    def noisy_prompt(seq: np.ndarray) -> np.ndarray:
        out = oracle(seq)
        out[:, :PROMPT - 1] = np.random.default_rng(0).integers(0, probe.vocab_size, (len(seq), PROMPT - 1))
        return out
    assert probe.score(test, noisy_prompt) == best
    assert probe.score(test, lambda seq: np.repeat(seq[:, 1:2], seq.shape[1], 1)) == 0.0  # t is never adjacent
    # going backwards along an edge is not a path
    def reverse_edges(seq: np.ndarray) -> np.ndarray:
        out = np.full(seq.shape, probe.pad)
        for r, row in enumerate(seq):
            u = int(row[PROMPT - 1])
            back = np.flatnonzero(test.adjacency[:, u])
            out[r, PROMPT - 1] = back[0] if len(back) else probe.pad
        return out
    assert probe.score(test, reverse_edges) == 0.0


def test_unknown_task_and_parameter_name_the_fix() -> None:
    with pytest.raises(ValueError, match="mqar"):
        get_probe("mqqar")
    with pytest.raises(ValueError, match="n_pairs"):
        get_probe("mqar", pairs=4)
    with pytest.raises(ValueError, match="4\\*n_pairs"):
        get_probe("mqar", length=10, n_pairs=4)


# ---- training on a probe ------------------------------------------------------------------
def test_adapt_spec_keeps_layers_and_sets_the_probe_shape() -> None:
    spec = variant("qk_v+2d", base=TINY)
    probe = get_probe("reverse", length=24)
    adapted = adapt_spec(spec, probe)
    assert (adapted.vocab_size, adapted.context, adapted.causal) == (10, 24, False)
    assert adapted.layers == spec.layers
    windowed = variant("qkv+window4", base=TINY)
    with pytest.raises(ValueError, match="bidirectional encoder"):
        adapt_spec(windowed, probe)


def test_run_probe_output_keys() -> None:
    out = run_probe(TINY, "copy", seed=1, budget=FAST, params={"length": 8})
    assert {"accuracy", "task", "seed", "train_steps", "wall_s"} <= set(out)
    assert out["task"] == "copy" and out["seed"] == 1 and out["train_steps"] == 8
    assert 0.0 <= out["accuracy"] <= 1.0 and out["wall_s"] > 0
    json.dumps(out)  # a trial record is plain data


@pytest.mark.parametrize("name", PROBE_TASKS)
@pytest.mark.parametrize("design", ["qkv", "qkv_single+2d", "mixer"])
def test_run_probe_works_for_every_task_and_design(name: str, design: str) -> None:
    out = run_probe(variant(design, base=TINY), name, budget=FAST, params=SMALL[name])
    assert 0.0 <= out["accuracy"] <= 1.0 and not out["diverged"]


def test_run_probe_is_reproducible() -> None:
    a = run_probe(TINY, "sort", seed=2, budget=FAST, params={"length": 8})
    b = run_probe(TINY, "sort", seed=2, budget=FAST, params={"length": 8})
    assert a["accuracy"] == b["accuracy"] and a["final_train_loss"] == b["final_train_loss"]


@pytest.mark.parametrize("task", ["copy", "sub"])
def test_small_design_learns_copy_and_sub(task: str) -> None:
    spec = ArchSpec(vocab_size=10, context=16, d_model=32, n_heads=2, ffn_dim=128, pos="learned", layers=uniform(2))
    out = run_probe(spec, task, budget=ProbeBudget(steps=150, batch_size=32, n_test=256), params={"length": 16})
    assert out["accuracy"] > 0.97, out


# ---- suites and the command line ------------------------------------------------------------
MINI_SUITE = """
kind = "probe_suite"
name = "mini"
description = "a smoke suite"
variants = ["qkv", "qk_v+2d", "mixer"]
seeds = 2
[model]
pos = "learned"
[grid]
mode = "star"
d_model = [32]
n_layers = [1]
n_heads = [2, 1]
length = [8, 6]
[budget]
steps = 4
batch_size = 8
n_test = 16
[tasks.copy]
[tasks.swap]
budget = { steps = 3 }
"""


@pytest.mark.parametrize("preset", ["paper_synthetic", "paper_synthetic_small", "paper_synthetic_gpu", "paper_synthetic_lr", "paper_synthetic_lr_len64", "causal_probes"])
def test_shipped_presets_parse(preset: str) -> None:
    from nas.probing import load_suite, preset_names

    assert preset in preset_names()
    config = load_suite(preset)
    assert {"qkv", "qk_v", "q_kv", "qkv_single"} <= set(config.variants)
    assert config.seeds >= 2


def test_suite_runs_and_writes_the_table(tmp_path) -> None:
    import pyarrow.parquet as pq

    import tomllib

    from nas.probing import parse_suite, run_suite

    config = parse_suite(tomllib.loads(MINI_SUITE))
    points = config.grid_points()
    assert points == [{"d_model": 32, "n_layers": 1, "n_heads": 2, "length": 8},
                      {"d_model": 32, "n_layers": 1, "n_heads": 1, "length": 8},
                      {"d_model": 32, "n_layers": 1, "n_heads": 2, "length": 6}]
    assert config.tasks[1].budget.steps == 3 and config.tasks[0].budget.steps == 4
    result = run_suite(config, tmp_path, log=lambda line: None)
    runs = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    assert len(runs) == 3 * 3 * 2 * 2  # designs × grid points × tasks × seeds
    assert {r["length"] for r in runs} == {8, 6}
    table = pq.read_table(tmp_path / "table.parquet").to_pylist()
    assert len(table) == 3 * 2 and all(row["n"] == 6 for row in table)
    mine = [r["value"] for r in runs if r["variant"] == "mixer" and r["task"] == "swap"]
    cell = next(row for row in table if row["variant"] == "mixer" and row["task"] == "swap")
    assert cell["mean"] == pytest.approx(np.mean(mine)) and cell["std"] == pytest.approx(np.std(mine, ddof=1))
    markdown = (tmp_path / "table.md").read_text()
    assert markdown == result["markdown"] and "| variant | copy | swap |" in markdown
    mixer_row = next(line for line in markdown.splitlines() if line.startswith("| mixer |") and "±" in line)
    grand = np.mean([r["value"] for r in runs if r["variant"] == "mixer"])
    assert mixer_row.endswith(f"| {cell['mean']:.3f} ± {cell['std']:.3f} | {grand:.3f} |")
    # The cost line sums the runs' own times, which a continued suite's last invocation does not show.
    run_s, cpu_s = sum(r["wall_s"] for r in runs), sum(r["cpu_s"] for r in runs)
    assert f"36 probe runs, 0 LM runs: {run_s:.0f} s of run time in all ({cpu_s:.0f} CPU-s)" in markdown


@pytest.mark.parametrize("where, key, value, message", [
    (None, "variants", ["qkv", "qkk"], "qkk"),
    ("grid", "n_heads", [3], "n_heads=3 must divide"),
    ("grid", "length", [7], "even"),  # swap needs an even length: caught before anything runs
    ("tasks", "swap", {"length": 8}, "conflicts with grid.length"),
    ("tasks", "oops", {"task": "nope"}, "nope"),
    ("budget", "step", 3, "step"),
    (None, "lm", {"context": 32}, "lm.tokens"),
    (None, "lm", {"tokens": 1000, "sequence": 8}, "sequence"),
    (None, "seeds", 0, "seeds"),
])
def test_bad_suite_files_name_the_key(where: str | None, key: str, value: object, message: str) -> None:
    import tomllib

    from nas.probing import parse_suite

    data = tomllib.loads(MINI_SUITE)
    (data if where is None else data[where])[key] = value
    with pytest.raises(ValueError, match=message):
        parse_suite(data)


def test_cli_probe_prints_accuracies(tmp_path, capsys) -> None:
    from nas.cli import main

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(TINY.to_json())
    code = main(["probe", str(spec_file), "--tasks", "copy,mqar", "--seeds", "2", "--steps", "3",
                 "--param", "copy.length=8", "--param", "mqar.n_pairs=2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tasks"]) == {"copy", "mqar"}
    assert len(report["tasks"]["copy"]["accuracies"]) == 2 and report["tasks"]["copy"]["params"] == {"length": 8}
    assert report["tasks"]["mqar"]["params"]["n_pairs"] == 2
    assert main(["probe", str(spec_file), "--tasks", "copy", "--param", "swap.length=8"]) == 2
    assert "not in --tasks" in capsys.readouterr().err
