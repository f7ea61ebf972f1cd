"""All-or-nothing output folders: everything is written into a hidden staging folder beside the output, which
replaces the output only once complete; on any failure the staging folder (and any parent folder the run created) is
removed, so no half-written output is ever left behind.

A run killed outright (kill -9, power loss) cannot clean up, so every run first looks for what such a run left:
staging folders are named `.<output>.<label>-<pid>-<random>` and a replaced output waits as
`.<output>.replaced-<pid>-<random>` until the new one is in place. A leftover whose process is gone is removed, and if
the output itself is missing (the run died between moving the old output aside and moving the new one in), the old
output is put back first. Where the platform can swap two folders in one step (Linux renameat2), the old and new
output trade places atomically and that window does not exist at all.
"""

import ctypes
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from conversion.checkpoint_io import ConversionError

LABELS = ("converting", "exporting")  # the staging labels of convert_llada2_uni_to_hf.py and export_to_original.py
_REPLACED = "replaced"


def check_paths(source: Path, source_option: str, output: Path, overwrite: bool, log=None):
    """Refuse a missing source folder, an output inside / around / equal to it (through symlinked parents too), and
    an existing output unless `overwrite` (and then only a LLaDA2 checkpoint folder); `source_option` names the
    command-line option in the messages. Leftovers of an interrupted earlier run are cleaned up first (see
    `recover`), their notes going to `log` (default: stderr)."""
    if not source.exists():
        raise ConversionError(f"{source_option} {source} does not exist")
    if not source.is_dir():
        raise ConversionError(f"{source_option} {source} is not a folder")
    real_output = output.parent.resolve() / output.name
    if real_output == source or real_output in source.parents or source in real_output.parents:
        raise ConversionError(f"--output {output} must not be, contain or lie inside {source_option} {source}")
    for note in recover(output):
        (log or (lambda message: print(message, file=sys.stderr, flush=True)))(f"note: {note}")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
        if not output.is_dir():
            raise ConversionError(f"--output {output} exists and is not a folder; remove it yourself")
        if any(output.iterdir()) and not is_checkpoint(output):
            raise ConversionError(f"--output {output} is not a LLaDA2 checkpoint folder (no config.json with a llada2 "
                                  "model_type), so --overwrite will not replace it; remove it yourself or choose "
                                  "another --output")


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a LLaDA2 checkpoint (converted or original layout): config.json with a llada2
    model_type. `--overwrite` replaces only such folders, never a folder of other files."""
    try:
        with open(folder / "config.json", encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(model_type, str) and model_type.startswith("llada2")


def recover(output: Path) -> list:
    """Clean up after runs on `output` that were killed; returns one note per action. A missing output with a
    `.replaced-*` backup gets the backup back (the newest, when there are several); staging folders and backups whose
    process has ended are removed; those of a process still running are reported and left alone."""
    output = Path(output)
    if not output.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.({'|'.join(LABELS + (_REPLACED,))})-(?:(\d+)-)?\w+$")
    leftovers = []
    for path in output.parent.iterdir():
        match = pattern.match(path.name)
        if match and (path.is_dir() or path.is_symlink()):
            pid = int(match.group(2)) if match.group(2) else None
            leftovers.append((path, match.group(1), pid is not None and _running(pid), pid))
    notes = []
    if not (output.exists() or output.is_symlink()):
        backups = [item for item in leftovers if item[1] == _REPLACED and not item[2]]
        if backups:
            path = max(backups, key=lambda item: item[0].stat().st_mtime)[0]
            os.replace(path, output)
            notes.append(f"restored {output} from {path.name}: an earlier run was stopped while replacing it")
            leftovers = [item for item in leftovers if item[0] != path]
    for path, label, running, pid in leftovers:
        if running:
            notes.append(f"{path} belongs to process {pid}, which is still running; left alone")
            continue
        _remove(path)
        kind = "replaced output" if label == _REPLACED else "staging folder"
        notes.append(f"removed {path.name}, a {kind} left by an interrupted run")
    return notes


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


@contextmanager
def staged_output(output: Path, label: str):
    """Yield an empty staging folder `.<output name>.<label>-<pid>-*` next to `output`; move it into place when the
    block succeeds, remove it when it raises."""
    if label not in LABELS:
        raise ValueError(f"staging label {label!r} is not one of {LABELS} (recover() would not find its leftovers)")
    created_parents = [p for p in reversed(output.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.{label}-{os.getpid()}-", dir=output.parent))
    try:
        yield staging
        _fix_permissions(staging)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created_parents):
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def _fix_permissions(folder: Path):
    """Give the staging folder (created 0700 by mkdtemp) and its files the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where that is unavailable
    (another platform, an old kernel or C library, a file system without it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here; fall back to two renames
        return False
    raise OSError(error, os.strerror(error), str(second))


def _move_into_place(staging: Path, output: Path):
    """Rename the finished staging folder to `output`, replacing an existing output only once the new one is ready.
    A swap leaves the old output under the staging name, removed next (by `recover` if this process dies first). With
    two renames instead, the old output waits as `.replaced-<pid>-*` until the new one is in; a run killed in between
    leaves no output, and the next run's `recover` puts the old one back."""
    if not output.exists():
        os.replace(staging, output)
        return
    if _exchange(staging, output):
        _remove(staging)
        return
    backup = output.parent / f".{output.name}.{_REPLACED}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(output, backup)
    try:
        os.replace(staging, output)
    except BaseException:
        os.replace(backup, output)
        raise
    _remove(backup)


def _remove(path: Path):
    """Remove a replaced output: a folder, or the symlink an output was (never what the link points at)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["LABELS", "check_paths", "is_checkpoint", "recover", "staged_output"]
