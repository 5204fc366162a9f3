import dataclasses
import signal

import pytest
import torch

from search_spaces.spec import ArchSpec
from search_spaces.variants import variant

# The signal tests need SIGINT and SIGHUP as a terminal delivers them. A suite started with nohup,
# or in the background of a shell without job control, inherits them ignored (and so would every
# run it starts), so give them back their defaults here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

# Every design family of the search space, on a tiny base; the tests run over all of them.
TINY = ArchSpec(vocab_size=64, context=32, d_model=32, n_heads=4, ffn_dim=64,
                layers=ArchSpec().layers * 2)  # 4 layers, so cla2 / noattn have room
ZOO = [
    "qkv", "q_kv", "qk_v", "qkv_single", "qkv+gqa2", "qkv+mqa", "q_kv+gqa2", "q_kv+mqa", "qk_v+mqa",
    "qkv+lowrank8", "q_kv+lowrank8", "qkv+latent16", "q_kv+latent16+gqa2", "qkv+cla2", "q_kv+cla2+mqa",
    "qk_v+2d", "qkv_single+2d", "qkv+dconv", "q_kv+dconv", "qkv+latent8+dconv", "qkv+window5",
    "q_kv+window4+cla2", "qkv+latent8+window6", "qkv+noattn2", "mixer",
]


def zoo_spec(name: str, **changes) -> ArchSpec:
    return variant(name, base=dataclasses.replace(TINY, **changes))


def tiny_study(*, name: str = "tiny", objectives: tuple[str, ...] = ("val_loss", "kv_cache_bytes_per_token"),
               trials: int = 4, tokens: int = 2048, extra: str = "") -> str:
    """A study file for a one-layer d32 model on the paper space: trials of a second or two."""
    return f"""
name = "{name}"
objectives = {list(objectives)!r}
trials = {trials}
[space]
name = "paper"
[space.options.base]
context = 32
d_model = 32
n_heads = 4
ffn_dim = 64
n_layers = 1
[budget]
tokens = {tokens}
batch_size = 8
eval_batches = 2
""".replace("'", '"') + extra


def tiny_suite(*, name: str, description: str, seeds: int, steps: int, tasks: tuple[str, ...] = ("copy",)) -> str:
    """A probe suite file of two designs on one d32 encoder at length 8: runs of a second or less."""
    return f"""
kind = "probe_suite"
name = "{name}"
description = "{description}"
variants = ["qkv", "q_kv"]
seeds = {seeds}
[grid]
d_model = [32]
n_layers = [1]
n_heads = [2]
length = [8]
[budget]
steps = {steps}
batch_size = 8
n_test = 16
""" + "".join(f"[tasks.{task}]\n" for task in tasks)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
