"""A search study's hypervolume as ``qkvnas status`` and the export show it: the history against
the study's fixed reference point (nas/study/reference.py), a line of text, and the export's
``hypervolume.parquet`` (trial number → hypervolume after it) and ``hypervolume.png``.

The numbers are Optuna's own hypervolume history (nas/engine/hypervolume.py). They are in the
objectives' own units multiplied together, so they compare trials of one study, not studies.
"""
from __future__ import annotations

from pathlib import Path

import optuna

from nas.engine import hypervolume
from nas.engine.hypervolume import History
from nas.study.reference import reference_for

FILES = ("hypervolume.parquet", "hypervolume.png")  # what the export adds for a study with a reference point


def study_history(study: optuna.Study) -> tuple[History, bool] | None:
    """The study's hypervolume history and whether its reference point is the stored one (else
    computed for a study made before qkvnas stored one); None for a study of one objective, or
    one whose config no longer loads here."""
    stored = hypervolume.stored_reference(study)
    if stored is not None:
        h = hypervolume.history(study, stored)
        return (h, True) if h is not None else None
    from nas.study.open import study_config

    try:
        point = reference_for(study, study_config(study))
    except (ValueError, ImportError):  # not a qkvnas study, or its space or objectives do not import here
        return None
    h = hypervolume.history(study, point) if point else None
    return (h, False) if h is not None else None


def reference_text(h: History, stored: bool) -> str:
    """'reference point val_loss 5.545, kv_cache_bytes_per_token 281.6 (stored in the study)'."""
    from nas.study.display import fmt_value

    point = ", ".join(f"{n} {fmt_value(v)}" for n, v in h.reference.items())
    return f"reference point {point} ({'stored in the study' if stored else 'computed: the study has none stored'})"


def write_files(study: optuna.Study, folder: Path) -> list[Path]:
    """``hypervolume.parquet`` and ``hypervolume.png`` in ``folder``; [] without a reference point."""
    found = study_history(study)
    if found is None:
        return []
    h, stored = found
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"number": pa.array(h.numbers, type=pa.int64()), "hypervolume": pa.array(h.values, type=pa.float64())})
    table = table.replace_schema_metadata({"reference_point": _json(h.reference), "reference_stored": str(stored).lower()})
    pq.write_table(table, folder / FILES[0])
    plot_history(h, folder / FILES[1], title=f"{study.study_name}: hypervolume after each completed trial")
    return [folder / name for name in FILES]


def plot_history(h: History, path: Path, *, title: str) -> None:
    """The hypervolume after each completed trial, as a step line, the reference point below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.step(h.numbers, h.values, where="post", c="tab:blue")
    ax.scatter(h.numbers, h.values, s=12, c="tab:blue")
    ax.set_xlabel("trial number (completed trials)")
    ax.set_ylabel("hypervolume")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, reference_text(h, True).split(" (")[0], fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _json(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True)
