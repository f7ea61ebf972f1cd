"""`llada-uni`: draw, answer and edit from the command line with any converted LLaDA2.0-Uni folder.

    llada-uni generate "a red circle on the left" -o out.png
    llada-uni ask out.png "What colour is the circle?"
    llada-uni edit out.png "make the circle blue" -o edited.png
    llada-uni generate "a red fox in snow" -o fox.png --model PATH      # any converted checkpoint

`--model` defaults to the `LLADA_UNI_MODEL` environment variable, else to the tiny shapes model shipped inside the
package (48 px pictures of one or two coloured shapes; see docs/shapes.md). Every failure (a missing model folder, an unreadable
image, an output folder that does not exist, a prompt the model cannot take) ends with one `error: ...` line and a
non-zero exit status, checked before the model is loaded where possible.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

ENV_MODEL = "LLADA_UNI_MODEL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llada-uni", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub, image_output: bool):
        sub.add_argument("--model", default=os.environ.get(ENV_MODEL),
                         help=f"converted model folder (default: ${ENV_MODEL}, else the shipped shapes model)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
        sub.add_argument("--block-length", type=int, default=None, help="diffusion block (default: the model's)")
        sub.add_argument("--steps", type=int, default=None, help="LLM denoising steps per block")
        sub.add_argument("--threshold", type=float, default=None, help="confidence that commits a token, in (0, 1]")
        sub.add_argument("--temperature", type=float, default=None, help="0 (the default) is greedy")
        sub.add_argument("--sprint", default=None, metavar="on|KEY=VALUE[,KEY=VALUE...]",
                         help="SPRINT (approximate, faster): 'on' for its defaults or SprintConfig fields, e.g. "
                         "keep_ratio=0.5,strategy=neg_entropy (ids lists joined by ';')")
        sub.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                         help="any LLaDA2GenerationConfig field, e.g. --set guidance_scale=3 (repeatable)")
        if image_output:
            sub.add_argument("-o", "--output", required=True, help="PNG file to write")
            sub.add_argument("--decoder", choices=("turbo", "normal"), default=None)
            sub.add_argument("--decoder-steps", type=int, default=None, help="decoder evaluations")
            sub.add_argument("--resolution-multiplier", type=int, default=None,
                             help="decoded pixels per token side = 16 x this (default: the model's)")

    generate = commands.add_parser("generate", help="text -> image")
    generate.add_argument("prompt")
    generate.add_argument("--height", type=int, default=None, help="pixels (default: the model's; 1024 for the release)")
    generate.add_argument("--width", type=int, default=None)
    common(generate, image_output=True)
    ask = commands.add_parser("ask", help="image + question -> answer")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default: the model's)")
    common(ask, image_output=False)
    edit = commands.add_parser("edit", help="image + instruction -> edited image")
    edit.add_argument("image")
    edit.add_argument("instruction")
    common(edit, image_output=True)
    return parser


class CommandError(Exception):
    pass


def _check(args):
    if not args.model:
        from llada_uni_shapes import model_path

        try:
            args.model = str(model_path())
        except FileNotFoundError as exc:
            raise CommandError(f"no model: pass --model PATH (a converted folder) or set ${ENV_MODEL} ({exc})") from None
    if not Path(args.model).is_dir():
        raise CommandError(f"--model {args.model} is not a folder")
    if not (Path(args.model) / "config.json").is_file():
        raise CommandError(f"--model {args.model} has no config.json: not a converted LLaDA2.0-Uni folder")
    image = None
    if getattr(args, "image", None) is not None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.image) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise CommandError(f"cannot read the image {args.image}: {exc}") from None
    output = getattr(args, "output", None)
    if output is not None:
        folder = Path(output).expanduser().resolve().parent
        if not folder.is_dir():
            raise CommandError(f"the folder of -o {output} does not exist")
    return image


def parse_value(text: str):
    """A command-line value: true / false / none, a ';'-joined id list, an int, a float, or the string itself."""
    text = text.strip()
    if text.lower() in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[text.lower()]
    if ";" in text:
        return [int(part) for part in text.split(";") if part.strip()]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_pairs(text: str, what: str) -> dict:
    """"a=1,b=x" -> {"a": 1, "b": "x"}; CommandError naming `what` on a malformed item."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{what}: expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = parse_value(value)
    return pairs


def parse_sprint(text):
    """`None` -> None; "on" -> True; "keep_ratio=0.5,strategy=neg_entropy" -> a checked settings dict."""
    from transformers_llada_uni.sprint_llada2_uni import SprintConfig

    if text is None:
        return None
    if text.strip().lower() in ("on", "true", "default"):
        return True
    settings = parse_pairs(text, "--sprint")
    try:
        SprintConfig.from_setting(settings)
    except ValueError as exc:
        raise CommandError(f"--sprint: {exc}") from None
    return settings


def _settings(args) -> dict:
    settings = {"generator": torch.Generator().manual_seed(args.seed)}
    for item in args.settings:
        settings.update(parse_pairs(item, "--set"))
    named = {"block_length": args.block_length, "steps": args.steps, "threshold": args.threshold,
             "temperature": args.temperature, "sprint": parse_sprint(args.sprint),
             "max_new_tokens": getattr(args, "max_new_tokens", None)}
    settings.update({key: value for key, value in named.items() if value is not None})
    if hasattr(args, "output"):
        settings["resolution_multiplier"] = args.resolution_multiplier
        if args.decoder is not None:
            settings["decoder"] = args.decoder
        if args.decoder_steps is not None:
            settings["num_inference_steps"] = args.decoder_steps
    return settings


def run(args) -> str:
    image = _check(args)
    from diffusers_llada_uni import LLaDA2UniPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    pipe = LLaDA2UniPipeline.from_pretrained(args.model)
    if args.command == "ask":
        return pipe(image=image, question=args.question, **settings).text[0]
    if args.command == "generate":
        result = pipe(args.prompt, height=args.height, width=args.width, **settings)
    else:
        result = pipe(image=image, instruction=args.instruction, **settings)
    result.images[0].save(args.output)
    return f"wrote {args.output}"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(run(args))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a model-side refusal (e.g. a prompt too long for the model): one line, no traceback
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
