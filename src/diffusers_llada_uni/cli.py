"""`llada-uni`: draw, answer and edit from the command line with any converted LLaDA2.0-Uni folder or Hub repo.

    llada-uni generate "a red circle on the left" -o out.png
    llada-uni ask out.png "What colour is the circle?"
    llada-uni edit out.png "make the circle blue" -o edited.png
    llada-uni generate "a red fox in snow" -o fox.png --model PATH_OR_REPO_ID --device cuda --dtype bfloat16
    llada-uni demo                      # a Gradio app of every task on http://127.0.0.1:7860 (needs ".[demo]")

`--model` defaults to the `LLADA_UNI_MODEL` environment variable, else to the tiny shapes model shipped inside the
package (48 px pictures of one or two coloured shapes; see docs/shapes.md). Images are read by the processor's own
loader (EXIF orientation, 16-bit scaling, transparency on white), so the command sees what the Python API sees.
Outputs are written to a temporary file beside the target and renamed over it, so a failure never leaves a partial
file (and `-o` may name the input picture).

Exit status: 0 done; 1 the model refused the request or failed (one `error:` line); 2 a usage error found before the
model is loaded (bad option, missing model, unreadable image, bad `-o`); 130 interrupted (Ctrl-C, one line).
"""

import argparse
import contextlib
import math
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

ENV_MODEL = "LLADA_UNI_MODEL"
EXIT_REFUSED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DTYPES = ("auto", "float32", "bfloat16", "float16")
# "org/name" (one slash, no leading dot or slash): what the Hub calls a repo id.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CommandError(Exception):
    """A usage error: reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage block and exits; one line is enough
        raise CommandError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"llada-uni {of('llada-uni')} (torch {of('torch')}, transformers {of('transformers')}, " \
           f"diffusers {of('diffusers')})"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llada-uni", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub, image_output: bool):
        sub.add_argument("--model", default=os.environ.get(ENV_MODEL),
                         help=f"converted model folder or Hub repo id (default: ${ENV_MODEL}, else the shipped shapes "
                         "model)")
        sub.add_argument("--device", default=None, help="where the models run, e.g. cpu, cuda, cuda:1 (default: cuda "
                         "when available, else cpu)")
        sub.add_argument("--dtype", choices=DTYPES, default="auto",
                         help="weights' dtype: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, "
                         "float16 (cuda only)")
        sub.add_argument("--seed", type=int, default=0, help="seed of every random choice (LLM sampling, decoder "
                         "noise)")
        sub.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads")
        sub.add_argument("--block-length", type=_positive_int, default=None,
                         help="diffusion block (default: the model's)")
        sub.add_argument("--steps", type=_positive_int, default=None, help="LLM denoising steps per block")
        sub.add_argument("--threshold", type=_finite_float, default=None,
                         help="confidence that commits a token, in (0, 1]")
        sub.add_argument("--temperature", type=_finite_float, default=None, help="0 (the default) is greedy")
        sub.add_argument("--sprint", default=None, metavar="on|KEY=VALUE[,KEY=VALUE...]",
                         help="SPRINT (approximate, faster): 'on' for its defaults or SprintConfig fields, e.g. "
                         "keep_ratio=0.5,strategy=neg_entropy (ids lists joined by ';')")
        sub.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                         help="any LLaDA2GenerationConfig field, e.g. --set guidance_scale=3 (repeatable)")
        if image_output:
            sub.add_argument("-o", "--output", required=True, help="image file to write (.png, .jpg, .webp, ...)")
            sub.add_argument("--decoder", choices=("turbo", "normal"), default=None)
            sub.add_argument("--decoder-steps", type=_positive_int, default=None, help="decoder evaluations")
            sub.add_argument("--resolution-multiplier", type=_positive_int, default=None,
                             help="decoded pixels per token side = 16 x this (default: the model's)")

    generate = commands.add_parser("generate", help="text -> image")
    generate.add_argument("prompt")
    generate.add_argument("--height", type=_positive_int, default=None,
                          help="pixels (default: the model's; 1024 for the release)")
    generate.add_argument("--width", type=_positive_int, default=None)
    common(generate, image_output=True)
    ask = commands.add_parser("ask", help="image + question -> answer")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.add_argument("--max-new-tokens", type=_positive_int, default=None, help="answer budget (default: the model's)")
    common(ask, image_output=False)
    edit = commands.add_parser("edit", help="image + instruction -> edited image")
    edit.add_argument("image")
    edit.add_argument("instruction")
    common(edit, image_output=True)
    demo = commands.add_parser("demo", help="a Gradio app of every task in the browser (pip install -e \".[demo]\")")
    demo.add_argument("--model", default=os.environ.get(ENV_MODEL),
                      help=f"converted model folder or Hub repo id (default: ${ENV_MODEL}, else the shipped shapes "
                      "model)")
    demo.add_argument("--device", default=None, help="where the models run (default: cuda when available, else cpu)")
    demo.add_argument("--dtype", choices=DTYPES, default="auto",
                      help="weights' dtype: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16, float16 "
                      "(cuda only)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    demo.add_argument("--port", type=_port, default=7860, help="TCP port (default: 7860)")
    demo.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port in 1..65535, got {text!r}")
    return value


# -------------------------------------------------------------------------------------------------- checks (no model)


def _model_source(model) -> tuple:
    """(what to pass to from_pretrained, whether it is a local folder). A Hub repo id ("org/name") that is not a
    local folder goes to from_pretrained as it is; anything else must be a converted folder."""
    if not model:
        from llada_uni_shapes import model_path

        try:
            return str(model_path()), True
        except FileNotFoundError as exc:
            raise CommandError(f"no model: pass --model PATH_OR_REPO_ID or set ${ENV_MODEL} ({exc})") from None
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CommandError(f"--model {model} has no config.json: not a converted LLaDA2.0-Uni folder")
        return str(path), True
    if _REPO_ID.match(model) and not path.exists():
        return model, False
    raise CommandError(f"--model {model} is not a folder (nor a Hub repo id of the form org/name)")


def _device_and_dtype(args):
    import torch

    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: torch finds no CUDA device here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CommandError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CommandError(f"--device {name}: MPS is not available here; use --device cpu")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float16" and device.type != "cuda":
        raise CommandError(f"--dtype float16 needs --device cuda (float16 on {device.type} is slow or unsupported; "
                           "use bfloat16 or float32)")
    return device, getattr(torch, dtype)


def _check_text(args):
    for name in ("prompt", "question", "instruction"):
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            raise CommandError(f"the {name.upper()} argument is empty or only whitespace; give it in words")


def _read_image(args):
    """The input picture through the processor's own loader (the one image path of every entry point)."""
    if getattr(args, "image", None) is None:
        return None
    from transformers_llada_uni.image_processing_llada2_uni import load_image

    try:
        return load_image(args.image, name="IMAGE")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def check_output(output) -> tuple:
    """(the file to write, Pillow's format name) for `-o`; CommandError naming the cause before any model work."""
    from PIL import Image

    path = Path(output).expanduser()
    if path.is_dir():
        raise CommandError(f"-o {output} is a folder; give a file name, e.g. {path / 'out.png'}")
    extension = path.suffix.lower()
    if not extension:
        raise CommandError(f"-o {output} has no file extension; end it with .png (or .jpg, .webp, ...)")
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        raise CommandError(f"-o {output}: Pillow cannot write {extension} images; use .png, .jpg or .webp")
    target = Path(os.path.realpath(path))  # through a symlink: replace the file it points at, keep the link
    if not target.parent.is_dir():
        raise CommandError(f"the folder of -o {output} does not exist")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CommandError(f"the folder of -o {output} is not writable")
    return target, image_format


def parse_value(text: str):
    """A command-line value: true / false / none, a ';'-joined id list, an int, a float, or the string itself."""
    text = text.strip()
    if text.lower() in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[text.lower()]
    if ";" in text:
        try:
            return [int(part) for part in text.split(";") if part.strip()]
        except ValueError:
            raise CommandError(f"expected ';'-joined integer ids, got {text!r}") from None
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


def _generation_settings(args) -> dict:
    """The LLM settings of the command line, checked field by field before the model loads (ranges that depend on the
    model, such as a block longer than its positions, are checked by the pipeline)."""
    from transformers import GenerationConfig

    from transformers_llada_uni.generation_config_llada2_uni import (
        ALIASES,
        DEFAULTS,
        LLaDA2GenerationConfig,
        named_like_the_original,
    )

    settings = {}
    for item in args.settings:
        settings.update(parse_pairs(item, "--set"))
    known = set(DEFAULTS) | set(ALIASES) | set(GenerationConfig().to_dict())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CommandError(f"--set: not a LLaDA2GenerationConfig field: {', '.join(unknown)}")
    named = {"block_length": args.block_length, "steps": args.steps, "threshold": args.threshold,
             "temperature": args.temperature, "sprint": parse_sprint(args.sprint),
             "max_new_tokens": getattr(args, "max_new_tokens", None)}
    settings.update({key: value for key, value in named.items() if value is not None})
    try:
        with named_like_the_original():
            LLaDA2GenerationConfig(**settings).check(vocab_size=sys.maxsize)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    return settings


# -------------------------------------------------------------------------------------------------- writing


def write_atomically(path, write) -> None:
    """Call `write(file)` on a temporary file in `path`'s folder, flush it to disk and rename it over `path`: the target
    is either untouched or complete, whatever fails (disk full, a crash, Ctrl-C). A replaced file keeps its mode."""
    path = Path(path)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def save_image(image, path, image_format: str) -> None:
    write_atomically(path, lambda file: image.save(file, format=image_format))


# -------------------------------------------------------------------------------------------------- running


def _load_pipeline(model, local, device, dtype):
    from diffusers_llada_uni import LLaDA2UniPipeline

    try:
        pipe = LLaDA2UniPipeline.from_pretrained(model, dtype=dtype)
    except Exception as exc:
        if local:
            raise
        raise CommandError(f"--model {model} is not a local folder, and loading it as a Hub repo id failed: "
                           f"{' '.join(str(exc).split())}") from None
    return pipe.to(device)


def run_demo(args) -> str:
    """Serve the Gradio app until Ctrl-C. gradio is checked before the model loads."""
    from diffusers_llada_uni.demo import build_app, import_gradio, launch

    try:
        import_gradio()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    model, local = _model_source(args.model)
    device, dtype = _device_and_dtype(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = _load_pipeline(model, local, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    app = build_app(pipe, model_name=args.model)  # None: the shipped model, named so
    try:
        launch(app, host=args.host, port=args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise CommandError(f"cannot serve on --host {args.host} --port {args.port}: {exc}") from None
    return "demo stopped"


def run(args) -> str:
    if args.command == "demo":
        return run_demo(args)
    _check_text(args)
    model, local = _model_source(args.model)
    output = check_output(args.output) if getattr(args, "output", None) is not None else None
    image = _read_image(args)
    settings = _generation_settings(args)
    device, dtype = _device_and_dtype(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # On the device that samples: the LLM draws tokens there and a CPU generator cannot drive a CUDA draw.
    settings["generator"] = torch.Generator(device=device).manual_seed(args.seed)
    pipe = _load_pipeline(model, local, device, dtype)
    if args.command == "ask":
        return pipe(image=image, question=args.question, **settings).text[0]
    if args.resolution_multiplier is not None:
        settings["resolution_multiplier"] = args.resolution_multiplier
    decoder = {"decoder": args.decoder, "num_inference_steps": args.decoder_steps}
    if args.command == "generate":
        result = pipe(args.prompt, height=args.height, width=args.width, **decoder, **settings)
    else:
        result = pipe(image=image, instruction=args.instruction, **decoder, **settings)
    save_image(result.images[0], *output)
    return f"wrote {args.output}"


def _error(message) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv=None) -> int:
    # Everything, imports included, runs inside this handler: Ctrl-C at any moment is one line and exit 130.
    try:
        try:
            args = _parser().parse_args(argv)
            print(run(args))
        except CommandError as exc:
            _error(exc)
            return EXIT_USAGE
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the model refused the request (e.g. a prompt too long for it): one line
            _error(exc)
            return EXIT_REFUSED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
