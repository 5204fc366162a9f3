"""A ladder's designs: the baseline first, then named variants and spec files, then the
Pareto designs of a study export; each at the shape it was given (sizes rescale it)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nas.config.shape import ModelShape
from search_spaces.spec import ArchSpec, LayerSpec
from search_spaces.variants import variant

if TYPE_CHECKING:  # the config validates itself by resolving its designs: no import at run time
    from nas.ladder.config import LadderConfig


@dataclass(frozen=True, kw_only=True)
class Design:
    name: str
    spec: ArchSpec  # at the shape it was given; sizes rescale it
    source: str  # "variant", a spec file path, or "export:<dir>"
    baseline: bool = False

    @property
    def design_id(self) -> int:
        return int(self.spec.hash, 16)


def resolve_designs(config: LadderConfig) -> list[Design]:
    """The baseline first, then the listed designs, then the export's (Pareto order)."""
    exported = export_designs(config.from_export, config.max_export_designs) if config.from_export else []
    listed_files = [ref for ref in (config.baseline, *config.designs) if _is_spec_file(ref)]
    if config.base is not None:
        base = config.base.spec()
    elif exported or listed_files:
        # The shape of the first spec given, so the baseline is that model with plain attention.
        first = exported[0].spec if exported else _design(listed_files[0], ModelShape().spec(), "designs").spec
        base = first.with_layers([LayerSpec() for _ in range(first.n_layers)])
    else:
        base = ModelShape().spec()
    baseline = dataclasses.replace(_design(config.baseline, base, "baseline"), baseline=True)
    designs = [baseline] + [_design(ref, base, f"designs[{i}]") for i, ref in enumerate(config.designs)]
    seen: dict[str, str] = {}
    for d in designs:
        if d.spec.hash in seen:
            raise ValueError(f"designs: {d.name!r} is the same model as {seen[d.spec.hash]!r}; list each design once")
        seen[d.spec.hash] = d.name
    # A Pareto front often holds the baseline itself: it is run once, as the baseline.
    return designs + [d for d in exported if d.spec.hash not in seen]


def _is_spec_file(ref: str) -> bool:
    return ref.endswith(".json") or os.sep in ref


def _design(ref: str, base: ArchSpec, where: str) -> Design:
    if _is_spec_file(ref):
        try:
            spec = ArchSpec.load(ref)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return Design(name=Path(ref).stem, spec=spec, source=ref)
    try:
        return Design(name=ref, spec=variant(ref, base=base), source="variant")
    except ValueError as err:
        raise ValueError(f"{where}: {err}; or give the path of a JSON spec file") from None


def export_designs(folder: str, limit: int | None) -> list[Design]:
    """The designs of a study export: ``specs/<hash>.json``, in the order of ``pareto.parquet``
    when it is there (its Pareto-optimal trials), else every spec in file-name order."""
    root = Path(folder)
    spec_dir = root / "specs"
    if not spec_dir.is_dir():
        raise ValueError(f"from_export: {root} has no specs/ folder; give the --out folder of `qkvnas export`")
    files = {p.stem: p for p in sorted(spec_dir.glob("*.json"))}
    pareto = _pareto_hashes(root / "pareto.parquet")
    order = list(files) if pareto is None else pareto
    designs, seen = [], set()
    for h in order:
        if h in files and h not in seen:
            seen.add(h)
            designs.append(Design(name=f"pareto-{h}", spec=ArchSpec.load(str(files[h])), source=f"export:{root}"))
    if not designs:
        raise ValueError(f"from_export: {spec_dir} holds no spec of a Pareto-optimal trial; export the study again")
    return designs[:limit] if limit else designs


def _pareto_hashes(path: Path) -> list[str] | None:
    """Spec hashes of the Pareto-optimal trials, best first as exported; None without the file."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["spec_hash"])
    return [str(h) for h in table.column("spec_hash").to_pylist() if h]
