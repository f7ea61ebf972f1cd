"""All-or-nothing output folders: everything is written into a hidden staging folder beside the output, which
replaces the output only once complete; on any failure the staging folder (and any parent folder the run created) is
removed, so no half-written output is ever left behind."""

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from conversion.checkpoint_io import ConversionError


def check_paths(source: Path, source_option: str, output: Path, overwrite: bool):
    """Refuse a missing source folder, an output inside / around / equal to it (through symlinked parents too), and
    an existing output unless `overwrite`; `source_option` names the command-line option in the messages."""
    if not source.exists():
        raise ConversionError(f"{source_option} {source} does not exist")
    if not source.is_dir():
        raise ConversionError(f"{source_option} {source} is not a folder")
    real_output = output.parent.resolve() / output.name
    if real_output == source or real_output in source.parents or source in real_output.parents:
        raise ConversionError(f"--output {output} must not be, contain or lie inside {source_option} {source}")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
        if not output.is_dir():
            raise ConversionError(f"--output {output} exists and is not a folder; remove it yourself")


@contextmanager
def staged_output(output: Path, label: str):
    """Yield an empty staging folder `.<output name>.<label>-*` next to `output`; move it into place when the block
    succeeds, remove it when it raises."""
    created_parents = [p for p in reversed(output.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.{label}-", dir=output.parent))
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


def _move_into_place(staging: Path, output: Path):
    """Rename the finished staging folder to `output`, replacing an existing output only once the new one is ready."""
    if not output.exists():
        os.replace(staging, output)
        return
    backup = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.replace(output, backup)
    try:
        os.replace(staging, output)
    except BaseException:
        os.replace(backup, output)
        raise
    shutil.rmtree(backup, ignore_errors=True)


__all__ = ["check_paths", "staged_output"]
