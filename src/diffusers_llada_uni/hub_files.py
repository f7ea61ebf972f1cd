"""Write the code files and `model_index.json` that make a converted folder loadable by diffusers itself.

The files are copies of this package's own modules (`hub_layout.ROOT_CODE_FILES` at the root, `CODE_FILES` in the
component folders diffusers reads them from). They are read from this module's own folder, so a pipeline loaded as
remote code saves the same files it was loaded with.
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .hub_layout import CODE_FILES, ROOT_CODE_FILES, write_model_index

HERE = Path(__file__).resolve().parent


def copy_atomically(source: Path, target: Path):
    """Copy through a temporary name in the target folder, so that a crash never leaves a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextmanager
def staged_save(folder):
    """Write a save into a hidden folder beside `folder`, then move each finished file into place with one rename,
    so that a crash or a full disk never leaves a truncated file under `folder` (files it already had stay whole)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.saving-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a save that crashed earlier
    staging = folder.parent / f".{folder.name}.saving-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        for source in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = folder / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def code_file_targets(present) -> dict:
    """{path relative to the root: package file name} of every code file a folder with `present` components holds."""
    targets = {name: name for name in ROOT_CODE_FILES}
    for component, file_name in CODE_FILES.items():
        if component in present:
            targets[f"{component}/{file_name}"] = file_name
    return targets


def write_pipeline_files(folder, present, pipeline_class: str = "LLaDA2UniPipeline"):
    """The diffusers side of the layout for the components in `present`: code files and model_index.json."""
    folder = Path(folder)
    for relative, file_name in code_file_targets(present).items():
        copy_atomically(HERE / file_name, folder / relative)
    write_model_index(folder, present, pipeline_class)


def upload_folder(folder, repo_id: str = None, token=None, private=None, commit_message: str = None):
    """`push_to_hub`: create the repo if needed and upload the whole folder (one commit)."""
    if not repo_id:
        raise ValueError("`push_to_hub=True` needs `repo_id` (e.g. 'your-name/llada2-uni').")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                             commit_message=commit_message or "Upload LLaDA2.0-Uni (transformers + diffusers layout)")


__all__ = ["code_file_targets", "copy_atomically", "staged_save", "upload_folder", "write_pipeline_files"]
