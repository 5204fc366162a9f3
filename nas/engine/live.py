"""What a running trial is doing now, for the driver's live line: its phase (costs, measure,
train, probe) and the tokens it has trained so far.

The worker writes one small JSON file, ``<study dir>/.live/<trial number>.json``, replaced
whole at each change (a phase starts, a learning-curve point is made) and removed when the
trial ends; the driver reads the folder every few seconds. A file, not the engine's report
channel: on Ray each report is a round trip the training loop waits on, sent only when the job
has rungs (nas/engine/tune.py), while a file costs the worker a write per evaluation and
nothing else. A worker on another machine writes its own disk: the driver then shows that
trial's design and time so far only. Writing never fails a trial (a read-only folder: no file).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LIVE_DIR = ".live"
_current: LiveFile | None = None  # the trial this process runs now (one at a time per process)


class LiveFile:
    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        self.path, self.fields = path, fields

    def update(self, **fields: Any) -> None:
        self.fields.update(fields, updated=time.time())
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.fields), encoding="utf-8")
            os.replace(tmp, self.path)  # a reader sees the old file or the new one, whole
        except OSError:
            pass  # the live line is a convenience: the trial goes on without it


@contextlib.contextmanager
def tracking(folder: Path, trial: int, **fields: Any) -> Iterator[LiveFile]:
    """While the block runs, ``phase`` and ``tokens`` update the trial's live file."""
    global _current
    live = LiveFile(Path(folder) / LIVE_DIR / f"{trial}.json", {"trial": trial, "started": time.time(), **fields})
    live.update(phase="starting", tokens=0)
    previous, _current = _current, live
    try:
        yield live
    finally:
        _current = previous
        with contextlib.suppress(OSError):
            live.path.unlink()


def phase(name: str) -> None:
    """The running trial (if this process tracks one) entered phase ``name``."""
    if _current is not None:
        _current.update(phase=name)


def tokens(n: int) -> None:
    if _current is not None:
        _current.update(tokens=int(n))


def running(folder: Path) -> dict[int, dict[str, Any]]:
    """Trial number → its live fields, for every live file readable in ``folder``."""
    out: dict[int, dict[str, Any]] = {}
    for path in (Path(folder) / LIVE_DIR).glob("*.json"):
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            out[int(fields["trial"])] = fields
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed while read, or not ours
    return out


# ---- the driver's side ------------------------------------------------------------------------
LIVE_EVERY = 5.0  # seconds between live lines while a trial runs


class LiveLine:
    """The driver's live line: which trials run (``started``/``ended``, called by the executor)
    with their time so far, and from their live files their phase and tokens. Every
    ``LIVE_EVERY`` seconds a thread writes it: redrawn in place on a terminal (``clear`` before
    any other print), a plain line elsewhere (a log file, a test)."""

    def __init__(self, out: Any, folder: Path | None) -> None:
        import threading

        self.out, self.folder = out, folder
        self.lock = threading.Lock()  # held for every write to ``out``, by this thread and the driver's prints
        self.running: dict[int, tuple[float, str]] = {}  # trial number → (start, design label)
        self.shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="qkvnas-live-line", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=LIVE_EVERY + 5)

    def started(self, number: int, label: str) -> None:
        with self.lock:
            self.running[number] = (time.time(), label)

    def ended(self, number: int) -> None:
        with self.lock:
            self.running.pop(number, None)

    def clear(self) -> None:
        """Before another print (the caller holds ``lock``): remove a live line drawn in place."""
        if self.shown:
            self.out.write("\r\033[K")
            self.shown = False

    def line(self) -> str | None:
        """'running: trial 3 9c6b52 q_kv+mqa 12s train 1,024 tokens', or None when none runs."""
        from nas.common import fmt_duration

        with self.lock:
            trials = dict(self.running)
        if not trials:
            return None
        files = running(self.folder) if self.folder is not None else {}
        now, parts = time.time(), []
        for number, (started, label) in sorted(trials.items()):
            state = files.get(number, {})
            words = [f"trial {number}", str(state.get("spec_hash") or "")[:6], str(state.get("design") or label),
                     fmt_duration(now - started),
                     str(state.get("phase") or ""), f"{int(state['tokens']):,} tokens" if state.get("tokens") else ""]
            parts.append(" ".join(w for w in words if w))
        return "running: " + "; ".join(parts)

    def _tick(self) -> None:
        while not self._stop.wait(LIVE_EVERY):
            text = self.line()
            if text is None:
                continue
            with self.lock:
                if _is_terminal(self.out):
                    self.clear()
                    self.out.write(text)
                    self.shown = True
                else:
                    self.out.write(text + "\n")
                self.out.flush()


def _is_terminal(out: Any) -> bool:
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
