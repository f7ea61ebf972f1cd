"""Write a tiny synthetic fine-tuning set (a `datasets` folder, `save_to_disk`) for trying examples/finetune_lora.py.

Two kinds of rows, mixed in one table (each row leaves the other kind's columns None, as `datasets` does):

* understanding: `image` (a small solid-colour square, stored with datasets' Image feature), `question`
  "What colour?", `answer` the colour's name;
* text-to-image: `prompt` "a <colour> square", `target_image_tokens` an h x w grid of VQ codes (nested lists; random
  here, fixed per colour: real ones come from `model.get_image_tokens` or `generate_image`).

    python examples/make_toy_dataset.py --output toy-dataset --rows 32 --seed 0

Deterministic for a given seed. The images and codes mean nothing: this is for plumbing, not for learning anything.
"""

import argparse
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20),
           "white": (245, 245, 245), "black": (10, 10, 10)}


def make_toy_dataset(output, rows: int = 32, seed: int = 0, image_size: int = 32, grid: int = 2,
                     codebook_size: int = 64, t2i_fraction: float = 0.5):
    """Build the dataset, save it to `output` and return it."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    try:
        from datasets import List  # datasets >= 4
    except ImportError:
        from datasets import Sequence as List

    rng = random.Random(seed)
    names = sorted(COLOURS)
    codes = {c: [[rng.randrange(codebook_size) for _ in range(grid)] for _ in range(grid)] for c in names}
    columns = {"image": [], "question": [], "answer": [], "prompt": [], "target_image_tokens": []}
    for _ in range(rows):
        colour = rng.choice(names)
        t2i = rng.random() < t2i_fraction
        image = None if t2i else PILImage.new("RGB", (image_size, image_size), COLOURS[colour])
        row = {"image": image, "question": None if t2i else "What colour?", "answer": None if t2i else colour,
               "prompt": f"a {colour} square" if t2i else None, "target_image_tokens": codes[colour] if t2i else None}
        for name, value in row.items():
            columns[name].append(value)
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string"),
                         "prompt": Value("string"), "target_image_tokens": List(List(Value("int64")))})
    dataset = Dataset.from_dict(columns, features=features)
    dataset.save_to_disk(str(output))
    return dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write (datasets.save_to_disk)")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32, help="side of the squares in pixels")
    parser.add_argument("--grid", type=int, default=2, help="side of the target code grid")
    parser.add_argument("--codebook-size", type=int, default=64, help="codes are drawn from [0, codebook_size)")
    parser.add_argument("--t2i-fraction", type=float, default=0.5, help="share of text-to-image rows")
    args = parser.parse_args()
    dataset = make_toy_dataset(args.output, args.rows, args.seed, args.image_size, args.grid, args.codebook_size,
                               args.t2i_fraction)
    print(f"{len(dataset)} rows written to {args.output}")


if __name__ == "__main__":
    main()
