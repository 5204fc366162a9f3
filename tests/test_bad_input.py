"""Bad input a new user plausibly gives: each case runs the real command line (``nas.cli.main``,
in this process) and must end in exit code 2 with one error line that names the problem and the
fix, no traceback, and no work started (training, measuring, a study's engine, a suite)."""
from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nas.cli import main
from tests.conftest import tiny_study, tiny_suite

CUDA = torch.cuda.is_available()
NO_CUDA_ONLY = pytest.mark.skipif(CUDA, reason="on a CUDA machine this input is valid")

OK_SPEC = {"vocab_size": 256, "context": 64, "d_model": 32, "n_heads": 4, "ffn_dim": 64, "layers": [{}]}
STUDY = tiny_study(name="bad", trials=2)
SUITE = tiny_suite(name="bad", description="a tiny suite", seeds=1, steps=4)
TEXT = "To be, or not to be, that is the question. " * 200  # ~9 kB of real text


def spec(**changes: Any) -> str:
    return json.dumps({**OK_SPEC, **changes})


def study(old: str = "", new: str = "", extra: str = "", *, top: str = "") -> str:
    """The tiny study with ``old`` replaced by ``new`` (a key changed), ``top`` (top-level keys)
    before it and ``extra`` (sections) after it."""
    assert old in STUDY
    return top + (STUDY.replace(old, new) if old else STUDY) + extra


def parquet(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def npy(path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.arange(1000, dtype=np.int64))
    path.write_bytes(buf.getvalue())


def zipped(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", TEXT)


def folder(path: Path) -> None:
    path.mkdir()


def folder_with(files: dict[str, bytes]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.mkdir()
        for name, content in files.items():
            (path / name).write_bytes(content)
    return make


def case(id: str, argv: str, expect: tuple[str, ...], files: dict[str, Any] | None = None, *,
         usage: bool = False, marks: Any = ()) -> Any:
    """``argv`` is split on spaces, ``{t}`` standing for the test's folder; ``files`` are written there
    first (str, bytes, or a function of the path); ``usage``: argparse's error, after its usage line."""
    return pytest.param(argv, expect, files or {}, usage, id=id, marks=marks)


GOOD = {"ok.json": spec()}
CASES = [
    # ---- spec files --------------------------------------------------------------------------
    case("spec-is-folder-costs", "costs {t}/d", ("is a folder", "one JSON spec file"), {"d": folder}),
    case("spec-is-folder-train", "train {t}/d --tokens 4096", ("is a folder",), {"d": folder}),
    case("spec-is-folder-measure", "measure {t}/d", ("is a folder",), {"d": folder}),
    case("spec-is-folder-probe", "probe {t}/d --tasks mqar", ("is a folder",), {"d": folder}),
    case("spec-folder-of-specs", "costs {t}/specs", ("is a folder", "e.g.", "abc.json"),
         {"specs": folder_with({"abc.json": spec().encode()})}),
    case("spec-missing", "costs {t}/nope.json", ("does not exist", "JSON spec"), GOOD),
    case("spec-binary", "costs {t}/s.json", ("not a text file", "UTF-8", "JSON spec"), {"s.json": b"\xff\xfe\x00\x81"}),
    case("spec-empty", "costs {t}/s.json", ("is empty", "JSON spec"), {"s.json": ""}),
    case("spec-blank", "costs {t}/s.json", ("is empty",), {"s.json": "  \n\n"}),
    case("spec-bad-json", "costs {t}/s.json", ("not valid JSON", "line 1"), {"s.json": '{"context": 64'}),
    case("spec-not-object", "costs {t}/s.json", ("must be a JSON object", "list"), {"s.json": "[1, 2]"}),
    case("spec-unknown-key", "costs {t}/s.json", ("unknown key", "contxt", "known keys", "context"),
         {"s.json": spec(contxt=64)}),
    case("spec-unknown-layer-key", "costs {t}/s.json", ("layers[0]", "unknown key", "prj", "proj"),
         {"s.json": spec(layers=[{"prj": "qkv"}])}),
    case("spec-layer-not-object", "costs {t}/s.json", ("layers[0] must be an object",), {"s.json": spec(layers=["qkv"])}),
    case("spec-heads-do-not-divide", "costs {t}/s.json", ("n_heads=3 must divide d_model=32", "use one of"),
         {"s.json": spec(n_heads=3)}),
    case("spec-unknown-proj", "costs {t}/s.json", ("proj='qkvx' is not known", "q_kv"),
         {"s.json": spec(layers=[{"proj": "qkvx"}])}),
    case("spec-kv-heads-do-not-divide", "costs {t}/s.json", ("n_kv_heads=3 must divide n_heads=4", "[1, 2, 4]"),
         {"s.json": spec(layers=[{"n_kv_heads": 3}])}),
    case("spec-context-string", "costs {t}/s.json", ("context='64' must be a positive integer",),
         {"s.json": spec(context="64")}),
    case("spec-context-negative", "costs {t}/s.json", ("context=-5 must be a positive integer",),
         {"s.json": spec(context=-5)}),
    case("spec-context-float", "costs {t}/s.json", ("context=1.5",), {"s.json": spec(context=1.5)}),
    case("spec-bias-not-bool", "costs {t}/s.json", ("bias='yes' must be true or false",), {"s.json": spec(bias="yes")}),
    case("spec-no-layers", "costs {t}/s.json", ("layers is empty", "at least one layer"), {"s.json": spec(layers=[])}),
    case("spec-window-without-attention", "costs {t}/s.json", ("window do not apply", "attn='attention'"),
         {"s.json": spec(layers=[{"attn": "none", "window": 4}])}),
    case("spec-kv-from-later-layer", "costs {t}/s.json", ("kv_from=1", "earlier layer"),
         {"s.json": spec(layers=[{"kv_from": 1}, {}])}),
    case("spec-rank-out-of-range", "costs {t}/s.json", ("qk_rank=500 is out of range", "1..31"),
         {"s.json": spec(layers=[{"qk_rank": 500}])}),
    case("spec-odd-rope-head", "costs {t}/s.json", ("even head dimension", "pos='learned'"),
         {"s.json": spec(d_model=36, n_heads=4)}),
    case("spec-unknown-pos", "costs {t}/s.json", ("pos='alibi' is not known", "rope"), {"s.json": spec(pos="alibi")}),
    case("spec-absurd-width", "costs {t}/s.json", ("n_heads=4 must divide d_model=1000000000000001",),
         {"s.json": spec(d_model=10**15 + 1)}),
    case("costs-seq-len-zero", "costs {t}/ok.json --seq-len 0", ("seq_len=0 must be at least 1",), GOOD),
    case("costs-seq-len-word", "costs {t}/ok.json --seq-len abc", ("--seq-len", "invalid int value"), GOOD, usage=True),
    case("costs-bad-dtype", "costs {t}/ok.json --dtype int8", ("--dtype", "invalid choice", "bfloat16"), GOOD, usage=True),
    case("costs-no-spec", "costs", ("required", "spec"), usage=True),
    # ---- measure ------------------------------------------------------------------------------
    case("measure-context-too-big", "measure {t}/s.json", ("needs at least", "causal mask", "free", "lower seq_len"),
         {"s.json": spec(context=10**8)}),
    case("measure-logits-too-big", "measure {t}/s.json", ("needs at least", "logits", "GB", "lower batch_size or seq_len"),
         {"s.json": spec(vocab_size=10**6, context=4096)}),
    case("measure-decode-context-too-big", "measure {t}/s.json --include decode --decode-contexts 100000000",
         ("needs at least", "KV cache", "lower decode_contexts"), {"s.json": spec(context=10**8)}),
    case("measure-mixer-too-big", "measure {t}/s.json", ("needs at least", "AdamW", "smaller design"),
         {"s.json": spec(context=100_000, layers=[{"attn": "mixer"}])}),
    case("measure-decode-context-over-learned-positions", "measure {t}/s.json --decode-contexts 128",
         ("decode_contexts=[128] exceed the design's context=64", "learned positions"), {"s.json": spec(pos="learned")}),
    case("measure-decode-contexts-word", "measure {t}/ok.json --decode-contexts 512,x", ("comma-separated integers",), GOOD),
    case("measure-decode-context-one", "measure {t}/ok.json --decode-contexts 1", ("decode_contexts=1", ">= 2"), GOOD),
    case("measure-unknown-phase", "measure {t}/ok.json --include foo", ("include=['foo']", "subset", "prefill"), GOOD),
    case("measure-zero-repeats", "measure {t}/ok.json --repeats 0", ("repeats=0 must be an integer >= 1",), GOOD),
    case("measure-negative-warmup", "measure {t}/ok.json --warmup -1", ("warmup=-1",), GOOD),
    case("measure-unknown-device", "measure {t}/ok.json --device tpu", ("device='tpu' is not a torch device", "cpu"), GOOD),
    case("measure-cuda-without-gpu", "measure {t}/ok.json --device cuda", ("no CUDA device", "device='cpu'"), GOOD,
         marks=NO_CUDA_ONLY),
    case("measure-seq-len-over-context", "measure {t}/ok.json --seq-len 1000", ("seq_len=1000 exceeds", "context=64"), GOOD),
    case("measure-fp16-on-cpu", "measure {t}/ok.json --dtype float16 --device cpu", ("float16", "bfloat16"), GOOD),
    case("measure-zero-threads", "measure {t}/ok.json --threads 0", ("threads=0",), GOOD),
    case("measure-compile-no-warmup", "measure {t}/ok.json --compile --warmup 0", ("warmup >= 1",), GOOD),
    case("measure-bad-sdpa", "measure {t}/ok.json --sdpa-backend foo", ("--sdpa-backend", "invalid choice"), GOOD,
         usage=True),
    # ---- train --------------------------------------------------------------------------------
    case("train-no-tokens", "train {t}/ok.json", ("--tokens", "required"), GOOD, usage=True),
    case("train-zero-tokens", "train {t}/ok.json --tokens 0", ("tokens=0 must be an integer >= 1",), GOOD),
    case("train-negative-tokens", "train {t}/ok.json --tokens -5", ("tokens=-5",), GOOD),
    case("train-tokens-below-a-step", "train {t}/ok.json --tokens 10", ("less than one step", "tokens >= 1024"), GOOD),
    case("train-zero-batch", "train {t}/ok.json --tokens 4096 --batch-size 0", ("batch_size=0",), GOOD),
    case("train-negative-lr", "train {t}/ok.json --tokens 4096 --lr -1", ("lr=-1.0 must be a positive number",), GOOD),
    case("train-nan-lr", "train {t}/ok.json --tokens 4096 --lr nan", ("lr=nan",), GOOD),
    case("train-seq-len-over-context", "train {t}/ok.json --tokens 4096 --seq-len 1000", ("exceeds", "context=64"),
         GOOD),
    case("train-negative-seed", "train {t}/ok.json --tokens 4096 --seed -1", ("seed=-1",), GOOD),
    case("train-unknown-device", "train {t}/ok.json --tokens 4096 --device tpu", ("not a torch device",), GOOD),
    case("train-bad-cuda-index", "train {t}/ok.json --tokens 4096 --device cuda:x", ("device='cuda:x'",), GOOD),
    case("train-context-too-big", "train {t}/s.json --tokens 4096", ("training design", "needs at least", "free"),
         {"s.json": spec(context=10**8)}),
    case("train-vocab-below-data", "train {t}/s.json --tokens 4096", ("vocab_size=100", "at least 256"),
         {"s.json": spec(vocab_size=100)}),
    case("train-encoder", "train {t}/s.json --tokens 4096", ("causal=false",), {"s.json": spec(causal=False)}),
    # ---- data files ---------------------------------------------------------------------------
    case("data-gzip", "train {t}/ok.json --tokens 4096 --data {t}/c.txt.gz", ("gzip-compressed", "gunzip"),
         {**GOOD, "c.txt.gz": gzip.compress(TEXT.encode())}),
    case("data-gzip-in-folder", "train {t}/ok.json --tokens 4096 --data {t}/corpus", ("b.txt.gz", "gzip"),
         {**GOOD, "corpus": folder_with({"a.txt": TEXT.encode(), "b.txt.gz": gzip.compress(TEXT.encode())})}),
    case("data-random-bytes", "train {t}/ok.json --tokens 4096 --data {t}/c.txt", ("looks binary", "UTF-8 text"),
         {**GOOD, "c.txt": np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()}),
    case("data-utf16", "train {t}/ok.json --tokens 4096 --data {t}/c.txt", ("UTF-16", "iconv"),
         {**GOOD, "c.txt": TEXT.encode("utf-16")}),
    case("data-numpy", "train {t}/ok.json --tokens 4096 --data {t}/ids.bin", ("NumPy array", "Parquet"),
         {**GOOD, "ids.bin": npy}),
    case("data-token-ids-as-bytes", "train {t}/ok.json --tokens 4096 --data {t}/train.bin", ("no val.bin", "Parquet"),
         {**GOOD, "train.bin": np.arange(5000, dtype=np.uint16).tobytes()}),
    case("data-zip", "train {t}/ok.json --tokens 4096 --data {t}/c.zip", ("zip archive", "extract"),
         {**GOOD, "c.zip": zipped}),
    case("data-parquet-without-suffix", "train {t}/ok.json --tokens 4096 --data {t}/c.txt", ("Parquet", "rename"),
         {**GOOD, "c.txt": parquet(pa.table({"tokens": list(range(100))}))}),
    case("data-missing", "train {t}/ok.json --tokens 4096 --data {t}/nope", ("does not exist",), GOOD),
    case("data-empty-file", "train {t}/ok.json --tokens 4096 --data {t}/c.txt", ("empty",), {**GOOD, "c.txt": ""}),
    case("data-empty-folder", "train {t}/ok.json --tokens 4096 --data {t}/corpus", ("holds no files",),
         {**GOOD, "corpus": folder}),
    case("data-mixed-folder", "train {t}/ok.json --tokens 4096 --data {t}/corpus", ("mixes token shards",),
         {**GOOD, "corpus": folder_with({"a.txt": TEXT.encode(), "b.parquet": b"PAR1"})}),
    case("data-too-short", "train {t}/ok.json --tokens 4096 --data {t}/c.txt", ("only 10 tokens", "more data"),
         {**GOOD, "c.txt": "0123456789"}),
    case("data-broken-parquet", "train {t}/ok.json --tokens 4096 --data {t}/c.parquet", ("not a readable .parquet",),
         {**GOOD, "c.parquet": b"PAR1 not really"}),
    case("data-parquet-text-column", "train {t}/ok.json --tokens 4096 --data {t}/c.parquet",
         ("no integer column", "tokens"), {**GOOD, "c.parquet": parquet(pa.table({"text": ["a", "b"]}))}),
    # ---- study files --------------------------------------------------------------------------
    case("run-nothing", "run", ("give a study file or --preset",)),
    case("run-file-and-preset", "run {t}/s.toml --preset quick", ("not both",), {"s.toml": STUDY}),
    case("run-unknown-preset", "run --preset quik", ("neither a study file nor a study preset", "quick")),
    case("run-folder", "run {t}/d", ("neither a study file",), {"d": folder}),
    case("run-json-not-toml", "run {t}/ok.json", ("not valid TOML",), GOOD),
    case("run-binary-toml", "run {t}/s.toml", ("not a text file", "TOML"), {"s.toml": b"\xff\xfe\x00\x81"}),
    case("run-empty-toml", "run {t}/s.toml", ("required", "study file"), {"s.toml": ""}),
    case("run-unknown-key", "run {t}/s.toml", ("trails: unknown key", "trials"), {"s.toml": study(top="trails = 3\n")}),
    case("run-unknown-budget-key", "run {t}/s.toml", ("budget.tokenz", "unknown key"),
         {"s.toml": study("eval_batches = 2", "eval_batches = 2\ntokenz = 5")}),
    case("run-zero-trials", "run {t}/s.toml", ("trials", "greater than or equal to 1"),
         {"s.toml": study("trials = 2", "trials = 0")}),
    case("run-trials-string", "run {t}/s.toml", ("trials", "valid integer"), {"s.toml": study("trials = 2", 'trials = "x"')}),
    case("run-negative-tokens", "run {t}/s.toml", ("tokens=-1",), {"s.toml": study("tokens = 2048", "tokens = -1")}),
    case("run-unknown-objective", "run {t}/s.toml", ("'val_los' is not known", "val_loss"),
         {"s.toml": study('"val_loss", "kv', '"val_los", "kv')}),
    case("run-one-objective", "run {t}/s.toml", ("2 to 4 objectives",),
         {"s.toml": study('"val_loss", "kv_cache_bytes_per_token"', '"val_loss"')}),
    case("run-objective-twice", "run {t}/s.toml", ("twice",),
         {"s.toml": study('"kv_cache_bytes_per_token"', '"val_loss"')}),
    case("run-unknown-probe-task", "run {t}/s.toml", ("unknown probe task", "mqar"),
         {"s.toml": study('"kv_cache_bytes_per_token"', '"probe:mqr"')}),
    case("run-bad-constraint", "run {t}/s.toml", ("max_<objective>",), {"s.toml": study(extra="[constraints]\nparams = 5\n")}),
    case("run-constraint-unknown-objective", "run {t}/s.toml", ("max_foo", "not known"),
         {"s.toml": study(extra="[constraints]\nmax_foo = 5\n")}),
    case("run-unknown-sampler", "run {t}/s.toml", ("sampler.name", "nsga4", "nsga2"),
         {"s.toml": study(extra='[sampler]\nname = "nsga4"\n')}),
    case("run-unknown-space", "run {t}/s.toml", ("search space 'fulll' is not known", "per_layer"),
         {"s.toml": study('name = "paper"', 'name = "fulll"')}),
    case("run-unknown-space-option", "run {t}/s.toml", ("unknown option", "layers", "projs"),
         {"s.toml": study(extra="[space.options]\nlayers = 3\n")}),
    case("run-unknown-base-option", "run {t}/s.toml", ("unknown base option", "dmodel"),
         {"s.toml": study("n_layers = 1", "n_layers = 1\ndmodel = 3")}),
    case("run-space-proj-unknown", "run {t}/s.toml", ("option projs", "'qkvx' is not known", "q_kv"),
         {"s.toml": study(extra='[space.options]\nprojs = ["qkvx"]\n')}),
    case("run-space-projs-not-a-list", "run {t}/s.toml --set space.options.projs=qkv", ("projs='qkv'", "list"),
         {"s.toml": STUDY}),
    case("run-space-gqa-does-not-divide", "run {t}/s.toml", ("'gqa3'", "does not divide n_heads=4", "gqa2"),
         {"s.toml": study(extra='[space.options]\nkv_sharing = ["gqa3"]\n')}),
    case("run-space-kv-sharing-unknown", "run {t}/s.toml", ("'gqax' is not known", "mqa"),
         {"s.toml": study(extra='[space.options]\nkv_sharing = ["mha", "gqax"]\n')}),
    case("run-full-space-odd-heads", "run {t}/s.toml", ("d_model=30", "even head dimension"),
         {"s.toml": study('name = "paper"', 'name = "full"', '[space.options]\nd_models = [32, 30]\n')}),
    case("run-full-space-depth", "run {t}/s.toml", ("n_layers_range", "low <= high"),
         {"s.toml": study('name = "paper"', 'name = "full"', '[space.options]\nn_layers_range = [3, 2]\n')}),
    case("run-base-heads", "run {t}/s.toml", ("n_heads=3 must divide d_model=32",),
         {"s.toml": study("n_heads = 4", "n_heads = 3")}),
    case("run-energy-without-nvml", "run {t}/s.toml", ("energy_j_per_token", "NVML", "drop it"),
         {"s.toml": study('"kv_cache_bytes_per_token"', '"energy_j_per_token"')}, marks=NO_CUDA_ONLY),
    case("run-objective-phase-left-out", "run {t}/s.toml", ("'decode' phase", "measure.include"),
         {"s.toml": study('"kv_cache_bytes_per_token"', '"decode_tokens_per_s"', '[measure]\ninclude = ["train"]\n')}),
    case("run-decode-objective-on-encoder", "run {t}/s.toml", ("encoder", "causal"),
         {"s.toml": study("n_layers = 1", "n_layers = 1\ncausal = false", "").replace(
             '"kv_cache_bytes_per_token"', '"decode_tokens_per_s"')}),
    case("run-data-gzip", "run {t}/s.toml", ("gzip-compressed",),
         {"s.toml": study(top='data = "c.gz"\n'), "c.gz": gzip.compress(TEXT.encode())}),
    case("run-data-missing", "run {t}/s.toml --set data=nope/", ("data path 'nope/' does not exist",), {"s.toml": STUDY}),
    case("run-bits-per-byte-of-token-ids", "run {t}/s.toml", ("bits_per_byte needs text", "val_loss"),
         {"s.toml": study('"val_loss", "kv', '"bits_per_byte", "kv', top='data = "ids.parquet"\n'),
          "ids.parquet": parquet(pa.table({"tokens": list(range(200)) * 5}))}),
    case("run-vocab-below-data", "run {t}/s.toml", ("space.options.base.vocab_size", "at least 256"),
         {"s.toml": study("n_layers = 1", "n_layers = 1\nvocab_size = 100")}),
    case("run-seq-len-over-context", "run {t}/s.toml --set budget.seq_len=64", ("budget.seq_len=64 exceeds",),
         {"s.toml": STUDY}),
    case("run-tokens-below-a-step", "run {t}/s.toml --set budget.tokens=10", ("less than one step",), {"s.toml": STUDY}),
    case("run-bad-name", "run {t}/s.toml", ("not a usable study name",), {"s.toml": study('name = "bad"', 'name = "my study!"')}),
    case("run-bad-target", "run {t}/s.toml", ("is not a target", "accelerator:"),
         {"s.toml": study(extra='[resources]\ntarget = "h100"\n')}),
    case("run-zero-cpus", "run {t}/s.toml --set resources.cpus_per_trial=0", ("cpus_per_trial", "greater than 0"),
         {"s.toml": STUDY}),
    case("run-bad-rungs", "run {t}/s.toml", ("rungs", "ascending"),
         {"s.toml": study(extra='[fidelity]\nscheduler = "mo_asha"\nrungs = [0.5, 1.5]\n')}),
    case("run-wrong-kind", "run {t}/s.toml", ("kind",), {"s.toml": study(top='kind = "ladder"\n')}),
    case("run-unknown-measure-key", "run {t}/s.toml", ("measure.repeatz", "unknown key"),
         {"s.toml": study(extra="[measure]\nrepeatz = 3\n")}),
    case("run-set-unknown-key", "run {t}/s.toml --set nope=1", ("nope: unknown key",), {"s.toml": STUDY}),
    case("run-set-no-value", "run {t}/s.toml --set trials", ("key.path=value",), {"s.toml": STUDY}),
    case("run-set-into-a-value", "run {t}/s.toml --set trials.x=1", ("trials is a value, not a section",),
         {"s.toml": STUDY}),
    # ---- the other commands -------------------------------------------------------------------
    case("resume-unknown-study", "resume nope", ("no study 'nope'", "storage URL")),
    case("status-unknown-study", "status nope", ("no study 'nope'",)),
    case("export-unknown-study", "export nope --out {t}/e", ("no study 'nope'",)),
    case("report-unknown-ladder", "report nope", ("no ladder 'nope'", "qkvnas ladder")),
    case("ladder-unknown-preset", "ladder --preset nope", ("neither a ladder file nor a ladder preset", "ladder_small")),
    case("ladder-unknown-variant", "ladder --preset ladder_small --set designs=['qkv+foo']", ("unknown modifier 'foo'",
         "gqa<G>")),
    case("ladder-unknown-design", "ladder --preset ladder_small --set designs=['qkvx']", ("unknown design 'qkvx'",)),
    case("tabulate-unknown-preset", "tabulate --preset nope", ("neither a table file nor a table preset",)),
    case("tabulate-nothing", "tabulate", ("give a table file or --preset",)),
    case("replay-missing-table", "replay {t}/nope", ("no table at", "qkvnas tabulate")),
    case("replay-not-parquet", "replay {t}/ok.json", ("not a readable Parquet table",), GOOD),
    case("replay-zero-trials", "replay {t}/nope --trials 0", ("--trials=0 must be at least 1",)),
    case("probe-unknown-task", "probe {t}/ok.json --tasks nope", ("probe task 'nope' is not known", "mqar"), GOOD),
    case("probe-no-tasks", "probe {t}/ok.json --tasks ,", ("--tasks", "each probe task once"), GOOD),
    case("probe-task-twice", "probe {t}/ok.json --tasks mqar,mqar", ("each probe task once",), GOOD),
    case("probe-zero-seeds", "probe {t}/ok.json --tasks mqar --seeds 0", ("--seeds=0",), GOOD),
    case("probe-param-malformed", "probe {t}/ok.json --tasks mqar --param x", ("TASK.KEY=VALUE",), GOOD),
    case("probe-param-other-task", "probe {t}/ok.json --tasks mqar --param induction.x=1", ("not in --tasks",), GOOD),
    case("probe-unknown-param", "probe {t}/ok.json --tasks mqar --param mqar.nope=1", ("unknown parameter", "n_pairs"),
         GOOD),
    case("probe-negative-threads", "probe {t}/ok.json --tasks mqar --threads -1", ("--threads=-1",), GOOD),
    case("probe-suite-unknown-preset", "probe-suite --preset nope --out {t}/o", ("neither a probe suite file",
         "paper_synthetic")),
    case("probe-suite-zero-seeds", "probe-suite --preset paper_synthetic --out {t}/o --seeds 0", ("--seeds=0",)),
    case("probe-suite-unknown-variant", "probe-suite --preset {t}/s.toml --out {t}/o",
         ("variant 'qkvz'", "unknown design", "q_kv"), {"s.toml": SUITE.replace('"q_kv"]', '"qkvz"]')}),
    case("probe-suite-unknown-task", "probe-suite --preset {t}/s.toml --out {t}/o", ("tasks", "cpy", "copy"),
         {"s.toml": SUITE.replace("[tasks.copy]", "[tasks.cpy]")}),
    case("ladder-export-missing", "ladder --preset ladder_small --from-export {t}/nope", ("has no specs/ folder",
         "qkvnas export")),
    case("unknown-command", "trian", ("invalid choice", "train"), usage=True),
]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every place real work starts raises: a bad input must be refused before any of them."""
    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("work started on a bad input")

    import nas.engine
    import nas.ladder
    import nas.measure.protocol
    import nas.probing
    import nas.probing.probe
    import nas.train

    for owner, name in ((nas.engine, "run"), (nas.train, "seeded_model"), (nas.probing.probe, "seeded_model"),
                        (nas.measure.protocol, "_Run"), (nas.probing, "run_suite"), (nas.ladder, "run_ladder")):
        monkeypatch.setattr(owner, name, started)


def write_files(root: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = root / name
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("argv, expect, files, usage", CASES)
def test_bad_input_is_one_line_exit_2(argv: str, expect: tuple[str, ...], files: dict[str, Any], usage: bool,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    write_files(tmp_path, files)
    monkeypatch.chdir(tmp_path)  # anything a command writes by default (studies/...) stays in tmp
    args = [a.replace("{t}", str(tmp_path)) for a in argv.split(" ") if a]
    try:
        rc = main(args)
    except SystemExit as exit:  # argparse's own errors
        rc = exit.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc == 2, (rc, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert errors[0].startswith("qkvnas"), err
    if not usage:
        assert len(lines) == 1, f"more than one line: {err}"
    assert out == ""
    for word in expect:
        assert word.lower() in errors[0].lower(), f"{word!r} not in: {errors[0]}"


def test_costs_of_a_huge_context_are_closed_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`qkvnas costs` summed over every position (a loop of `context` steps); now it is exact and
    instant at any context, and a windowed layer's mean keys still follow the causal mask."""
    path = tmp_path / "s.json"
    path.write_text(spec(context=10**12, layers=[{}, {"window": 1000}]))
    t0 = time.perf_counter()
    assert main(["costs", str(path)]) == 0
    assert time.perf_counter() - t0 < 5
    figures = json.loads(capsys.readouterr().out)
    assert figures["seq_len"] == 10**12 and figures["flops_per_token"] > 0
