"""Short training: it learns real text, it is reproducible, and divergence is a recorded outcome."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nas import cli
from nas import train as train_mod
from nas.data import Corpus, load_corpus
from nas.model import build_model
from nas.train import DIVERGENCE_GRAD_NORM, TrainBudget, lr_at, make_optimizer, train
from search_spaces.spec import ArchSpec, uniform

TINY = ArchSpec(d_model=32, n_heads=2, ffn_dim=64, context=32, layers=uniform(1, proj="q_kv"))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


def unigram_entropy_nats(corpus: Corpus) -> float:
    counts = np.bincount(corpus.train, minlength=corpus.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_learns_shakespeare_below_unigram_entropy(corpus: Corpus) -> None:
    spec = ArchSpec(d_model=64, n_heads=2, ffn_dim=256, context=64, layers=uniform(2))
    budget = TrainBudget(tokens=16 * 64 * 120, batch_size=16, lr=3e-3, seed=0)
    seen: list[dict] = []
    result = train(spec, corpus, budget, on_eval=seen.append)
    entropy = unigram_entropy_nats(corpus)  # ≈ 3.33 nats/byte for this corpus
    assert not result.diverged and result.reason is None
    assert result.val_loss < entropy - 0.5, f"val_loss {result.val_loss:.3f} vs unigram entropy {entropy:.3f}"
    assert result.bits_per_byte == pytest.approx(result.val_loss / math.log(2))
    assert result.steps == 120 and result.tokens_seen == 120 * 16 * 64
    assert len(result.train_losses) == len(result.grad_norms) == 120
    assert list(result.curve) == seen and 8 <= len(seen) <= 9
    assert seen[-1]["step"] == 120 and seen[-1]["val_loss"] == result.val_loss
    assert seen[0]["val_loss"] > seen[-1]["val_loss"] + 0.5
    assert result.train_tokens_per_s > 0 and result.wall_s > 0 and result.device == "cpu"


def test_same_seed_same_losses(corpus: Corpus) -> None:
    budget = TrainBudget(tokens=8 * 32 * 6, batch_size=8, eval_batches=2, seed=3)
    a, b = train(TINY, corpus, budget), train(TINY, corpus, budget)
    assert a.train_losses == b.train_losses and a.grad_norms == b.grad_norms and a.val_loss == b.val_loss
    c = train(TINY, corpus, TrainBudget(tokens=8 * 32 * 6, batch_size=8, eval_batches=2, seed=4))
    assert c.train_losses != a.train_losses


def test_training_leaves_the_callers_rng_alone(corpus: Corpus) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(TINY, corpus, TrainBudget(tokens=8 * 32 * 2, batch_size=8, eval_batches=1))
    assert torch.equal(torch.rand(3), expected)


def test_nan_loss_ends_the_run_as_diverged(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that starts emitting NaN at its 4th training forward: recorded, not raised."""
    calls = {"n": 0}

    def poisoned(spec: ArchSpec) -> torch.nn.Module:
        model = build_model(spec)

        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if module.training:
                calls["n"] += 1
                if calls["n"] >= 4:
                    return output * float("nan")
            return None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", poisoned)
    result = train(TINY, corpus, TrainBudget(tokens=8 * 32 * 20, batch_size=8, eval_every=2, eval_batches=1))
    assert result.diverged and result.reason == "non-finite training loss (nan) at step 4"
    assert result.steps == 4 and len(result.train_losses) == 4 and math.isnan(result.train_losses[-1])
    assert math.isnan(result.val_loss) and math.isnan(result.bits_per_byte)
    assert [p["step"] for p in result.curve] == [2, 4] and result.curve[-1]["val_loss"] is None
    assert math.isfinite(result.curve[0]["val_loss"])


def test_huge_learning_rate_diverges_cleanly(corpus: Corpus) -> None:
    result = train(TINY, corpus, TrainBudget(tokens=8 * 32 * 20, batch_size=8, lr=1e3, warmup_frac=0.0, eval_batches=1))
    assert result.diverged and result.reason is not None
    assert result.steps < 20 and math.isnan(result.val_loss)
    last = result.grad_norms[-1]
    assert not math.isfinite(last) or last > DIVERGENCE_GRAD_NORM or not math.isfinite(result.train_losses[-1])
    json.dumps(result.to_dict())  # a diverged record still serialises


def test_learning_rate_schedule() -> None:
    budget = TrainBudget(tokens=1, lr=1e-2, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = [lr_at(s, 100, budget) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2) and lrs[10] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-3)
    assert lr_at(0, 1, budget) == pytest.approx(1e-2)  # a single step runs at the peak


def test_weight_decay_only_on_matrices() -> None:
    model = build_model(TINY)
    opt = make_optimizer(model, TrainBudget(tokens=1, weight_decay=0.1), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize(
    "spec, budget, message",
    [
        (TINY, TrainBudget(tokens=100, batch_size=8), "less than one step"),
        (TINY, TrainBudget(tokens=10_000, seq_len=64), "exceeds the spec's context=32"),
        (ArchSpec(d_model=32, n_heads=2, ffn_dim=64, context=32, vocab_size=100, layers=uniform(1)),
         TrainBudget(tokens=10_000), "set vocab_size to at least 256"),
        (ArchSpec(d_model=32, n_heads=2, ffn_dim=64, context=32, causal=False, layers=uniform(1)),
         TrainBudget(tokens=10_000), "causal=false"),
        (TINY, TrainBudget(tokens=10_000, device="tpu9"), "not a torch device"),
    ],
)
def test_bad_inputs_are_value_errors(corpus: Corpus, spec: ArchSpec, budget: TrainBudget, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(spec, corpus, budget)


@pytest.mark.parametrize("field, value", [("tokens", 0), ("lr", -1.0), ("warmup_frac", 1.0), ("grad_clip", 0.0),
                                          ("batch_size", 0), ("seq_len", 0), ("min_lr_frac", 2.0)])
def test_budget_validation_names_the_field(field: str, value: object) -> None:
    kwargs = {"tokens": 1000, field: value}
    with pytest.raises(ValueError, match=field):
        TrainBudget(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is visible")
def test_cuda_without_gpu_is_a_clear_error(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        train(TINY, corpus, TrainBudget(tokens=10_000, device="cuda"))


# ---- command line -------------------------------------------------------------------------
def test_cli_train_prints_the_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(TINY.to_json())
    text = tmp_path / "book.txt"
    text.write_bytes(b"to be or not to be, that is the question. " * 200)
    code = cli.main(["train", str(spec_path), "--tokens", str(8 * 32 * 6), "--batch-size", "8",
                     "--data", str(text), "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"] == 6 and out["tokens_seen"] == 8 * 32 * 6
    assert out["spec_hash"] == TINY.hash and out["corpus"]["name"] == "book.txt"
    assert out["curve"][-1]["step"] == 6 and math.isfinite(out["val_loss"]) and not out["diverged"]


def test_cli_train_input_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(TINY.to_json())
    code = cli.main(["train", str(spec_path), "--tokens", "1000", "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_late_readback_still_stops_at_the_first_bad_step(corpus: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA losses are read back in blocks; divergence is still dated to the step it happened."""
    monkeypatch.setattr(train_mod, "_readback_every", lambda device: 4)
    calls = {"n": 0}

    def poisoned(spec: ArchSpec) -> torch.nn.Module:
        model = build_model(spec)

        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            calls["n"] += module.training
            return output * float("inf") if module.training and calls["n"] == 6 else None

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(train_mod, "build_model", poisoned)
    result = train(TINY, corpus, TrainBudget(tokens=8 * 32 * 20, batch_size=8, eval_every=10, eval_batches=1))
    assert calls["n"] == 8  # ran on to the next readback
    assert result.diverged and result.steps == 6 and "at step 6" in (result.reason or "")
    assert [p["step"] for p in result.curve] == [6] and result.curve[0]["val_loss"] is None
