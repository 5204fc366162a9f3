"""The KV cache of incremental decoding: what each layer keeps between steps, and how it is laid out.

Each layer's K/V source (or mixer) defines its per-token entries: DenseKV K (B, g, S, hd) after
RoPE and V; TiedKV K alone; LatentKV the latent (B, S, r); a mixer its normalised inputs
(B, S, d); a borrowing or attention-free layer nothing. Two layouts hold them, behind one
method, `LayerCache.add(new, pos) -> Held`:

- `StaticCache` (the default, as serving engines do it): the layer's tensors are allocated
  once, for `max_tokens` tokens, and each step writes its new entries in place; attention reads
  views of the tokens held. No step allocates or copies past entries. A windowed layer keeps a
  ring of `window` slots: token p lives in slot p % window, so a step overwrites the oldest
  entry instead of shifting the others.
- `ConcatCache`: the cache grows by `torch.cat` at every step, which copies every past entry.
  It is how qkvnas decoded before the static cache, kept for the side-by-side benchmark
  (benchmarks/bench_measure.py); `new_cache(layout="concat")`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch
from torch import Tensor

CacheLayout = Literal["static", "concat"]
CACHE_LAYOUTS: tuple[CacheLayout, ...] = ("static", "concat")


class Held(NamedTuple):
    """What a step attends to once its new entries are added."""

    entries: tuple[Tensor, ...]  # every kept token's entries, along the token axis
    k_pos: Tensor  # (S,) absolute position of each, in the entries' order
    k_first: int  # the lowest position: the entries hold k_first .. k_first+S-1, in some order
    new_at: int  # index of the first new token among the entries (the new ones are contiguous)


def uncached(new: tuple[Tensor, ...], pos: Tensor) -> Held:
    """A forward without a cache attends to its own tokens only."""
    return Held(new, pos, 0, 0)


class LayerCache:
    """One layer's cache. This base holds only the state of its depthwise convolutions (the last
    K-1 inputs of each, a fixed size): a borrowing or attention-free layer caches no tokens."""

    def __init__(self) -> None:
        self.conv: dict[str, Tensor] = {}

    def add(self, new: tuple[Tensor, ...], pos: Tensor) -> Held:
        """Keep the entries of the new tokens at positions `pos`; every entry to attend to."""
        raise TypeError("this layer caches no per-token entries")

    def per_token_tensors(self) -> list[Tensor]:
        """The entries of the tokens held (for a static cache, views of its tensors)."""
        return []

    def allocated(self) -> list[Tensor]:
        """The tensors the cache holds in memory, whatever their fill."""
        return self.per_token_tensors()


class StaticCache(LayerCache):
    """Tensors of a fixed number of token slots, allocated once and written in place; a ring of
    slots for a windowed layer (`ring`), where the positions held move on as tokens arrive."""

    def __init__(self, shapes: tuple[tuple[int, ...], ...], dim: int, *, ring: bool,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.dim, self.ring = dim, ring
        self.buffers = tuple(torch.empty(shape, device=device, dtype=dtype) for shape in shapes)
        self.capacity = shapes[0][dim]
        self.slot_pos = torch.arange(self.capacity, device=device)  # the absolute position in each slot
        self.seen = 0  # tokens written so far

    @property
    def held(self) -> int:
        return min(self.seen, self.capacity)

    def per_token_tensors(self) -> list[Tensor]:
        return [b.narrow(self.dim, 0, self.held) for b in self.buffers]

    def allocated(self) -> list[Tensor]:
        return list(self.buffers)

    def add(self, new: tuple[Tensor, ...], pos: Tensor) -> Held:
        self._check(new)
        T, p0 = new[0].shape[self.dim], self.seen
        if p0 + T <= self.capacity:  # the slots fill in order: slot = position
            for buf, t in zip(self.buffers, new):
                buf.narrow(self.dim, p0, T).copy_(t)
            self.seen += T
            return Held(tuple(self.per_token_tensors()), self.slot_pos[: self.seen], 0, p0)
        if not self.ring:
            raise ValueError(f"{p0 + T} tokens exceed the {self.capacity} this cache was made for; "
                             "make it with new_cache(batch, max_tokens) large enough")
        return self._one_in_ring(new, p0) if T == 1 else self._chunk_in_ring(new, pos, p0)

    def _one_in_ring(self, new: tuple[Tensor, ...], p0: int) -> Held:
        """One token over a full ring: it takes the oldest slot; every slot is within the window."""
        slot = p0 % self.capacity
        for buf, t in zip(self.buffers, new):
            buf.narrow(self.dim, slot, 1).copy_(t)
        self.slot_pos[slot] = p0
        self.seen += 1
        return Held(self.buffers, self.slot_pos, p0 + 1 - self.capacity, slot)

    def _chunk_in_ring(self, new: tuple[Tensor, ...], pos: Tensor, p0: int) -> Held:
        """Several tokens that wrap the ring (a prefill longer than the window, say): they attend
        to the kept entries in position order and to each other (a temporary copy, once per
        chunk), then their last `capacity` entries take the ring's slots."""
        old = self._in_order()
        keys = tuple(torch.cat([o, t], dim=self.dim) for o, t in zip(old, new)) if old else new
        k_first = p0 - self.held
        T = new[0].shape[self.dim]
        n = min(T, self.capacity)
        slots = pos[T - n:] % self.capacity
        for buf, t in zip(self.buffers, new):
            buf.index_copy_(self.dim, slots, t.narrow(self.dim, T - n, n))
        self.slot_pos.index_copy_(0, slots, pos[T - n:])
        self.seen += T
        return Held(keys, torch.arange(k_first, p0 + T, device=pos.device), k_first, p0 - k_first)

    def _in_order(self) -> tuple[Tensor, ...]:
        """The held entries by position (the ring unrolled); () when nothing is held."""
        if self.seen == 0:
            return ()
        if self.seen <= self.capacity:
            return tuple(self.per_token_tensors())
        s, cap = self.seen % self.capacity, self.capacity  # slot s holds the oldest entry
        return tuple(torch.cat([b.narrow(self.dim, s, cap - s), b.narrow(self.dim, 0, s)], dim=self.dim)
                     for b in self.buffers)

    def _check(self, new: tuple[Tensor, ...]) -> None:
        buf, t = self.buffers[0], new[0]
        if t.dtype != buf.dtype:
            raise ValueError(f"the cache was allocated in {buf.dtype} but this step computes {t.dtype}; make the "
                             "cache under the same autocast as the decoding, or give new_cache its dtype")
        if t.shape[0] != buf.shape[0]:
            raise ValueError(f"the cache was made for batch {buf.shape[0]}, but this step has batch {t.shape[0]}")


class ConcatCache(LayerCache):
    """The entries grow by `torch.cat` every step (each step copies all past entries); a window
    then keeps the last `window` of them. For comparison with `StaticCache` only."""

    def __init__(self, dim: int, window: int | None) -> None:
        super().__init__()
        self.dim, self.window = dim, window
        self.entries: tuple[Tensor, ...] = ()
        self.start = 0  # absolute position of the first kept entry (a window drops old ones)

    def per_token_tensors(self) -> list[Tensor]:
        return list(self.entries)

    def add(self, new: tuple[Tensor, ...], pos: Tensor) -> Held:
        start = self.start
        full = tuple(torch.cat([old, t], dim=self.dim) for old, t in zip(self.entries, new)) if self.entries else new
        S, T = full[0].shape[self.dim], new[0].shape[self.dim]
        self.entries = full
        if self.window is not None and S > self.window:
            drop = S - self.window
            self.entries = tuple(t.narrow(self.dim, drop, self.window) for t in full)
            self.start += drop
        return Held(full, torch.arange(start, start + S, device=pos.device), start, S - T)


@dataclass
class KVCache:
    layers: list[LayerCache]  # one per layer; empty until the first forward when new_cache had no batch
    seen: int = 0  # tokens processed so far = absolute position of the next token
    max_tokens: int | None = None  # the most tokens it may take
    layout: CacheLayout = "static"

    def __post_init__(self) -> None:
        if self.layout not in CACHE_LAYOUTS:
            raise ValueError(f"layout={self.layout!r} is not known; use one of {list(CACHE_LAYOUTS)}")

    def check_room(self, total: int) -> None:
        if self.max_tokens is not None and total > self.max_tokens:
            raise ValueError(f"{total} tokens exceed the cache's max_tokens={self.max_tokens}; "
                             "make it with new_cache(batch, max_tokens) for the whole sequence")

    def nbytes(self) -> int:
        """Bytes of the per-token cache entries (K, V, latents, mixer inputs) of the tokens held."""
        return sum(t.numel() * t.element_size() for lc in self.layers for t in lc.per_token_tensors())

    def allocated_nbytes(self) -> int:
        """Bytes of the per-token tensors in memory: a static cache's whole allocation."""
        return sum(t.numel() * t.element_size() for lc in self.layers for t in lc.allocated())

    def state_nbytes(self) -> int:
        """Bytes of the fixed-size convolution state (does not grow with tokens)."""
        return sum(t.numel() * t.element_size() for lc in self.layers for t in lc.conv.values())


class CacheOwner(Protocol):
    """What a cache needs of the module whose entries it keeps (a projected K/V source, a mixer)."""

    token_dim: int  # the axis of its cached tensors that grows with tokens

    def cache_shapes(self, batch: int, slots: int) -> tuple[tuple[int, ...], ...]: ...


def fill_cache(cache: KVCache, owners: list[tuple[CacheOwner | None, int | None]], batch: int,
               device: torch.device, dtype: torch.dtype) -> None:
    """Each layer's cache, from its owner (None: it caches no tokens) and its window."""
    cache.layers = [_layer_cache(cache, owner, window, batch, device, dtype) for owner, window in owners]


def _layer_cache(cache: KVCache, owner: CacheOwner | None, window: int | None, batch: int,
                 device: torch.device, dtype: torch.dtype) -> LayerCache:
    if owner is None:
        return LayerCache()
    if cache.layout == "concat":
        return ConcatCache(owner.token_dim, window)
    assert cache.max_tokens is not None
    slots = cache.max_tokens if window is None else min(window, cache.max_tokens)
    return StaticCache(owner.cache_shapes(batch, slots), owner.token_dim, ring=window is not None,
                       device=device, dtype=dtype)
