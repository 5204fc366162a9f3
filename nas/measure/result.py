"""The result of one measurement: every figure, its spread and where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nas.measure.settings import MeasureSettings
from nas.measure.timing import Stat


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """Every figure of one design. `figures` holds plain values (None where unavailable);
    `stats` the timed figures with their spread; `unavailable` a reason for each None."""

    spec_hash: str
    settings: MeasureSettings
    fingerprint: dict[str, Any]
    stats: dict[str, Stat] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    lock_wait_s: float = 0.0
    held_from: float = 0.0  # epoch seconds: the node's lock held (the measurement ran) from ...
    held_to: float = 0.0  # ... to, so that a reader can check that no two measurements overlapped
    # figure → why it is noisy (nas/measure/noise.py), {} when every figure was within its limits;
    # `tries`: the same for every try made (1 + the remeasures), the kept one the quietest.
    noisy: dict[str, str] = field(default_factory=dict)
    tries: tuple[dict[str, str], ...] = ()

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able: each timed figure `x` as its median, with `x_cv` beside it."""
        out: dict[str, Any] = {"spec_hash": self.spec_hash, "wall_s": self.wall_s, "lock_wait_s": self.lock_wait_s,
                               "held_from": self.held_from, "held_to": self.held_to}
        out.update(self.figures)
        for name, stat in self.stats.items():
            out[name], out[f"{name}_cv"] = stat.median, stat.cv
        out["samples"] = {name: list(stat.samples) for name, stat in self.stats.items()}
        out["unavailable"] = dict(self.unavailable)
        out["noisy"] = dict(self.noisy)
        out["tries"] = [dict(reasons) for reasons in self.tries]
        out["fingerprint"] = self.fingerprint
        return out

    def table(self) -> str:
        """A small human-readable table: each figure, its spread, and where it came from."""
        rows = [("figure", "median", "cv")]
        for name, stat in self.stats.items():
            if name.endswith(f"_ctx{self.fingerprint['settings']['decode_contexts'][0]}"):
                continue  # the first context is shown unsuffixed
            rows.append((name, _fmt(stat.median), "-" if stat.cv is None else f"{100 * stat.cv:.1f}%"))
        for name, value in self.figures.items():
            if "_ctx" not in name and value is not None:
                rows.append((name, str(value) if isinstance(value, bool) else _fmt(value), ""))
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>14}  {c:>7}" for a, b, c in rows]
        fp = self.fingerprint
        lines.append(f"on {fp['device_name']} ({fp['device']}), torch {fp['torch']}, {fp['threads']} threads; "
                     f"{len(self.unavailable)} figure(s) unavailable (see 'unavailable')")
        for name, reason in self.noisy.items():
            lines.append(f"noisy after {len(self.tries)} tries: {name}: {reason}")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
