"""A folder written as a whole: each write is a new generation, swapped in with one rename.

``whole_folder(out)`` yields a fresh folder beside ``out`` (``.<name>.<pid>-<random>``); the
caller writes every file into it, ``manifest.json`` (each file and its size) is written last,
and ``out`` becomes a symbolic link to it by renaming a new link over the old one, which is
atomic. So a reader of ``out`` sees the previous generation or the new one, whole, never new
files beside old ones, never half a file; a write that fails or is killed leaves ``out`` as it
was. A reader that reads several files resolves ``out`` once (``Path.resolve()``) and reads
them all from there.

The generation a write replaced stays until the next write is swapped in (a reader that
resolved it can finish reading it), then it is removed, with whatever writers that died (their
pid is gone) left part-way. An ``out`` that is a plain
folder (an export of an older qkvnas, or an empty folder) is moved aside and removed once the
new generation is in place; one that holds anything else is refused before anything is
written, so no file of the user's is ever removed. Without symbolic links (some Windows set-ups)
the generation is renamed into place instead: ``out`` is missing for a moment, never mixed.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def whole_folder(out: str | Path, *, known: Collection[str]) -> Iterator[Path]:
    """Yield a new, empty folder; when the block ends without an error it replaces ``out``
    as a whole. ``known``: the names a generation holds, which a plain ``out`` folder may hold
    too (it is then an older write, replaced); anything else there is refused."""
    out = Path(os.path.abspath(out))  # "." has no name to put a generation beside
    out.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(out, known)
    tidy(out, keep=(), complete=False)  # what writers that died part-way left
    gen = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", dir=out.parent))
    os.chmod(gen, 0o777 & ~_UMASK)  # mkdtemp makes 0700; an export is as readable as any file
    try:
        yield gen
        write_manifest(gen)
        _swap_in(gen, out, known)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise


def write_manifest(gen: Path) -> None:
    files = {str(p.relative_to(gen)): p.stat().st_size for p in sorted(gen.rglob("*")) if p.is_file()}
    (gen / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def check_replaceable(out: Path, known: Collection[str]) -> None:
    """``out`` may be missing, a link to a generation, or a plain folder of known names."""
    if out.is_symlink():
        if not _ours(out, os.readlink(out)):
            raise ValueError(f"{out} is a symbolic link qkvnas did not make; give a folder path instead")
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder path")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in known and p.name != MANIFEST
                         and not (p.name.startswith(".") and p.name.endswith(".tmp")))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(f"{out} holds files that an export does not write ({shown}); give a new or empty folder, "
                             "or move them away: the folder is replaced as a whole")


def _swap_in(gen: Path, out: Path, known: Collection[str]) -> None:
    check_replaceable(out, known)  # again: the folder may have changed while the files were written
    previous = os.readlink(out) if out.is_symlink() else None
    aside = out.with_name(f".{out.name}.{os.getpid()}.old") if out.is_dir() and previous is None else None
    link = out.with_name(f".{out.name}.{os.getpid()}.link")
    try:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(gen.name, link)  # relative: the folder moves with its parent
    except (OSError, NotImplementedError):
        link = gen  # no symbolic links here: the generation itself is renamed into place
    if aside is not None:
        os.rename(out, aside)  # a plain folder cannot be renamed over: it goes aside first
    if link is gen and out.is_symlink():
        out.unlink()
    os.replace(link, out)
    # The generation just replaced stays until the next swap: a reader that resolved it has
    # the time of a whole export to finish reading it.
    tidy(out, keep={gen.name, previous or ""}, complete=True)


def tidy(out: Path, *, keep: Collection[str], complete: bool) -> list[Path]:
    """Remove what writers of ``out`` left beside it: links and folders set aside, and
    generations, except ``keep`` and the current one. A live writer's are left alone (another
    process may be writing one now), and complete generations (with a manifest) only when
    ``complete``. Returns what was removed."""
    current = os.readlink(out) if out.is_symlink() else None
    removed = []
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        pid = _writer_pid(out, path.name)
        if pid is None or path.name in keep or path.name == current:
            continue
        if (pid != os.getpid() and _alive(pid)) or (not complete and (path / MANIFEST).is_file()):
            continue
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _writer_pid(out: Path, name: str) -> int | None:
    match = re.fullmatch(rf"\.{re.escape(out.name)}\.(\d+)(?:-[^/]+|\.old|\.link)", name)
    return int(match.group(1)) if match else None


def _ours(out: Path, target: str) -> bool:
    return os.sep not in target and _writer_pid(out, target) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

