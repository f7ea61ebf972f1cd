"""Build the shapes-world datasets: one `datasets.DatasetDict` per task, in the row formats of
`LLaDA2UniDataCollator`, with train / validation / test splits that hold out whole scenes.

    python examples/shapes/dataset.py --out shapes-data --num-scenes 1000 --seed 0

writes `shapes-data/{text-to-image,understanding,editing}` (`save_to_disk`; `datasets.load_from_disk` reads them).
Rows carry a `scene` column (`Scene.to_json()`; editing rows also `target_scene` and the `edit`ed attribute) so an
evaluation can recover the ground truth. Deterministic for a given seed, byte for byte.
"""

import argparse
import io
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence

if TYPE_CHECKING:
    from datasets import DatasetDict

try:
    from .world import Scene, all_scenes, caption, changed_attribute, edits, new_colour_scenes, questions, render
except ImportError:  # run as a script from this folder
    from world import Scene, all_scenes, caption, changed_attribute, edits, new_colour_scenes, questions, render

TASKS = ("text-to-image", "understanding", "editing")
SPLITS = ("train", "validation", "test")


def _png(scene: Scene) -> dict:
    # Encoded once per scene and handed to the Image feature as bytes: a scene's image appears in many rows.
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def split_scenes(num_scenes: Optional[int] = None, seed: int = 0,
                 splits: Sequence[float] = (0.8, 0.1, 0.1)) -> Dict[str, list]:
    """`num_scenes` distinct scenes (drawn without replacement, so no scene is in two splits) cut into train /
    validation / test by the `splits` fractions. `num_scenes=None` takes the whole world."""
    world = all_scenes()
    if num_scenes is None:
        num_scenes = len(world)
    if not 1 <= num_scenes <= len(world):
        raise ValueError(f"num_scenes must be in [1, {len(world)}] (the shapes world has {len(world)} distinct "
                         f"scenes), got {num_scenes}")
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1) > 1e-6:
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {tuple(splits)}")
    # Stratified by shape count: single-shape scenes are only 5% of the world (the only ones "in the center" or
    # answering "one"), and a plain shuffle could leave a small validation or test split without any.
    rng, out = random.Random(seed), {split: [] for split in SPLITS}
    singles, pairs = ([s for s in world if len(s.shapes) == count] for count in (1, 2))
    single_share = round(num_scenes * len(singles) / len(world))
    for group, take in ((singles, single_share), (pairs, num_scenes - single_share)):
        rng.shuffle(group)
        group = group[:take]
        train_end = round(splits[0] * len(group))
        validation_end = train_end + round(splits[1] * len(group))
        for split, part in zip(SPLITS, (group[:train_end], group[train_end:validation_end], group[validation_end:])):
            out[split] += part
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def new_colour_split(seed: int = 0, train: float = 0.8) -> Dict[str, list]:
    """The scenes with a new colour (pink), cut into "train" (seen by the pixel side, and by the tutorial's LoRA) and
    "test" (never trained on)."""
    scenes = new_colour_scenes()
    random.Random(f"new-colour/{seed}").shuffle(scenes)
    cut = round(train * len(scenes))
    return {"train": scenes[:cut], "test": scenes[cut:]}


def _rows(scenes, seed: int) -> Dict[str, dict]:
    columns = {
        "text-to-image": {"prompt": [], "target_image": [], "scene": []},
        "understanding": {"image": [], "question": [], "answer": [], "scene": []},
        "editing": {"image": [], "instruction": [], "target_image": [], "scene": [], "target_scene": [], "edit": []},
    }
    t2i, understanding, editing = (columns[task] for task in TASKS)
    for scene in scenes:
        image, key = _png(scene), scene.to_json()
        for name, value in (("prompt", caption(scene)), ("target_image", image), ("scene", key)):
            t2i[name].append(value)
        for question, answer in questions(scene):
            for name, value in (("image", image), ("question", question), ("answer", answer), ("scene", key)):
                understanding[name].append(value)
        # Seeded by the scene, not by its rank: a scene's edits do not change with num_scenes or the split.
        for instruction, target in edits(scene, random.Random(f"{seed}/{key}")):
            row = {"image": image, "instruction": instruction, "target_image": _png(target), "scene": key,
                   "target_scene": target.to_json(), "edit": changed_attribute(scene, target)}
            for name, value in row.items():
                editing[name].append(value)
    return columns


def build_datasets(num_scenes: Optional[int] = None, seed: int = 0,
                   splits: Sequence[float] = (0.8, 0.1, 0.1)) -> Dict[str, "DatasetDict"]:
    """{"text-to-image", "understanding", "editing"} -> DatasetDict(train, validation, test)."""
    from datasets import Dataset, DatasetDict, Features, Image, Value

    images = {"image", "target_image"}
    out = {task: DatasetDict() for task in TASKS}
    for split, scenes in split_scenes(num_scenes, seed, splits).items():
        for task, columns in _rows(scenes, seed).items():
            features = Features({name: Image() if name in images else Value("string") for name in columns})
            out[task][split] = Dataset.from_dict(columns, features=features)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write, one sub-folder per task")
    parser.add_argument("--num-scenes", type=int, default=None, help="distinct scenes to use (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out} exists and is not empty; pick a new folder")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the parent folder {args.out.parent} does not exist")
    start = time.perf_counter()
    try:
        data = build_datasets(args.num_scenes, args.seed)
    except ValueError as error:
        parser.error(str(error))
    for task, splits in data.items():
        splits.save_to_disk(str(args.out / task))
        counts = ", ".join(f"{split} {len(rows)}" for split, rows in splits.items())
        print(f"{task}: {counts} rows")
    scenes = {split: len(rows) for split, rows in data["text-to-image"].items()}
    print(f"scenes: {scenes}; written to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
