"""A Gradio app over `LLaDA2UniPipeline`: text-to-image (with thinking), understanding, editing and interleaved
generation in tabs, with the model's own defaults as the starting settings and a replay of the LLM's denoising.

    llada-uni demo                                   # the shipped shapes model on http://127.0.0.1:7860
    llada-uni demo --model PATH_OR_REPO_ID --device cuda

From Python: `build_app(pipe).launch()`. gradio is an optional dependency (`pip install -e ".[demo]"`); it is
imported only inside the functions that need it, so this module imports without it.

The denoising is shown as a replay after each run, from the per-step history the sampler records
(`output_history=True`): image tokens as a grid of cells coloured per VQ code (grey while masked), text as the
response filling in (`░` for a masked position). The pipeline call itself is not interrupted to stream.
"""

import os
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .demo_frames import (  # noqa: F401  (re-exported: the page's rendering lives there)
    CODE_GLYPH,
    MASK_COLOUR,
    MASK_GLYPH,
    MAX_FRAMES,
    canvas_image,
    canvas_text,
    history_steps,
    pick_frames,
    segments_html,
)

DEMO_INSTALL = 'pip install -e ".[demo]"'


class DemoError(ValueError):
    """Bad input from the page: shown there as one message (never a stack trace)."""


def import_gradio():
    """gradio, or an ImportError with one line that says how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home unless the user asks for them
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the demo needs gradio, which is not installed: {DEMO_INSTALL} (or pip install "
                          "gradio)") from None
    return gradio


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    """What a user tunes in the page; every default is read from the loaded model (`model_defaults`)."""

    threshold: float
    guidance_scale: float
    edit_guidance_scale: float
    image_steps: int
    steps: int
    decoder: Optional[str]
    decoder_steps: Optional[int]
    seed: int = 0
    sprint: bool = False

    FIELDS = ("threshold", "guidance_scale", "edit_guidance_scale", "image_steps", "steps", "decoder",
              "decoder_steps", "seed", "sprint")
    LABELS = {"threshold": "confidence threshold", "guidance_scale": "guidance scale (text-to-image)",
              "edit_guidance_scale": "edit guidance scale", "image_steps": "LLM steps per block (images)",
              "steps": "LLM steps per block (text)", "decoder": "decoder", "decoder_steps": "decoder steps",
              "seed": "seed", "sprint": "SPRINT"}

    @classmethod
    def from_values(cls, *values, decoders=()) -> "Settings":
        """Check the page's values (None when a field was cleared) and name the setting that is wrong."""
        given = dict(zip(cls.FIELDS, values))

        def number(name, integer=False, low=None, high=None, low_open=False):
            value = given.get(name)
            label = cls.LABELS[name]
            if value is None or value == "":
                raise DemoError(f"the {label} setting is empty; give a number.")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise DemoError(f"the {label} setting must be a number, got {value!r}.") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise DemoError(f"the {label} setting must be a finite number, got {value}.")
            if integer:
                if value != int(value):
                    raise DemoError(f"the {label} setting must be a whole number, got {value}.")
                value = int(value)
            if low is not None and (value <= low if low_open else value < low):
                raise DemoError(f"the {label} setting must be {'>' if low_open else '>='} {low}, got {value}.")
            if high is not None and value > high:
                raise DemoError(f"the {label} setting must be <= {high}, got {value}.")
            return value

        decoder = given.get("decoder") or None
        if decoder is not None and decoder not in decoders:
            raise DemoError(f"the decoder {decoder!r} is not loaded (loaded: {', '.join(decoders) or 'none'}).")
        return cls(threshold=number("threshold", low=0, high=1, low_open=True),
                   guidance_scale=number("guidance_scale", low=0),
                   edit_guidance_scale=number("edit_guidance_scale", low=0),
                   image_steps=number("image_steps", integer=True, low=1),
                   steps=number("steps", integer=True, low=1),
                   decoder=decoder,
                   decoder_steps=number("decoder_steps", integer=True, low=1) if decoder else None,
                   seed=number("seed", integer=True, low=0, high=2 ** 63 - 1),
                   sprint=bool(given.get("sprint")))

    def llm_kwargs(self, task: str) -> dict:
        """The pipeline keywords of `task` ("t2i", "understanding", "edit", "interleaved")."""
        kwargs = {"threshold": self.threshold, "sprint": True if self.sprint else None, "output_history": True}
        kwargs["steps"] = self.image_steps if task in ("t2i", "edit") else self.steps
        if task in ("t2i", "interleaved"):
            kwargs["guidance_scale"] = self.guidance_scale
        if task == "edit":
            kwargs["edit_guidance_scale"] = self.edit_guidance_scale
        if task != "understanding" and self.decoder:
            kwargs["decoder"], kwargs["num_inference_steps"] = self.decoder, self.decoder_steps
        return kwargs


def model_defaults(pipe) -> dict:
    """The starting values of the page's settings: the model's generation config (with the release defaults for
    fields it leaves unset) and the decoder's own step counts; turbo when it is loaded."""
    from transformers_llada_uni.generation_config_llada2_uni import DEFAULTS

    from .hub_layout import DECODER_DEFAULTS

    config = pipe.mllm.generation_config

    def read(name):
        value = getattr(config, name, None)
        return DEFAULTS[name] if value is None else value

    decoders = list(pipe.decoders)
    decoder = "turbo" if "turbo" in decoders else (decoders[0] if decoders else None)
    return {"threshold": read("threshold"), "guidance_scale": read("guidance_scale"),
            "edit_guidance_scale": read("edit_guidance_scale"), "image_steps": read("image_steps"),
            "steps": read("steps"), "decoder": decoder, "decoders": decoders,
            "decoder_steps": {name: DECODER_DEFAULTS[name]["num_inference_steps"] for name in decoders},
            "image_height": read("image_height"), "image_width": read("image_width")}


# ------------------------------------------------------------------------------------------------ inputs


def read_text(value, name: str) -> str:
    if value is None or not str(value).strip():
        raise DemoError(f"the {name} is empty; type it in words.")
    return str(value).strip()


def read_image(value, name: str):
    """An uploaded picture (a file path, as the upload fields give it, or an image) through the processor's loader,
    the one image path of every entry point; None when the field is empty."""
    if value is None:
        return None
    from transformers_llada_uni.image_processing_llada2_uni import to_rgb

    try:
        return to_rgb(value, name=name)
    except ValueError as exc:
        message = str(exc)
        if "cannot identify image file" in message or "cannot read the image" in message:
            raise DemoError(f"the {name} is not a picture this app can read (PNG, JPEG, WebP, ...): "
                            f"{os.path.basename(os.fspath(value))}") from None
        raise DemoError(message) from None


def read_images(first, second, name: str) -> list:
    images = [read_image(first, f"first {name}"), read_image(second, f"second {name}")]
    if images[0] is None and images[1] is None:
        raise DemoError(f"upload a {name} first.")
    return [image for image in images if image is not None]


# ------------------------------------------------------------------------------------------------ running the tasks


@dataclass
class Result:
    """What one run shows: final images / text / segments, the replay frames and a one-line summary."""

    images: List = field(default_factory=list)
    text: Optional[str] = None
    segments: Optional[list] = None
    frames: List = field(default_factory=list)
    summary: str = ""


class DemoRunner:
    """One loaded pipeline and the tasks the page runs on it, one at a time (the pipeline is not thread-safe)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.defaults = model_defaults(pipe)
        self.lock = threading.Lock()
        config = pipe.mllm.config
        generation = pipe.mllm.generation_config
        self.mask_id = getattr(generation, "mask_token_id", None)
        if self.mask_id is None:
            self.mask_id = getattr(config, "mask_token_id", None)
        self.eos_id = getattr(generation, "eos_token_id", None)
        if isinstance(self.eos_id, (list, tuple)):
            self.eos_id = self.eos_id[0] if self.eos_id else None
        self.offset = getattr(config, "image_token_offset", 0) or 0
        codebook = getattr(config, "codebook_size", None) or config.get_text_config().vocab_size - self.offset
        self.code_range = (self.offset, self.offset + codebook)

    def settings(self, *values) -> Settings:
        return Settings.from_values(*values, decoders=self.defaults["decoders"])

    def _call(self, settings: Settings, task: str, **inputs):
        """`pipe(**inputs, generator=..., **settings)`; the output's `.history` holds the LLM's per-step canvases."""
        import torch

        kwargs = settings.llm_kwargs(task)
        generator = torch.Generator(device=self.pipe.mllm.device).manual_seed(settings.seed)
        started = time.perf_counter()
        with self.lock:
            try:
                out = self.pipe(**inputs, generator=generator, **kwargs)
            except (ValueError, TypeError) as exc:  # the pipeline's checks of the request: say what it says
                raise DemoError(" ".join(str(exc).split())) from None
        return out, time.perf_counter() - started

    def _decoder(self, settings: Settings) -> tuple:
        """The decoder a call runs and its steps: the chosen one, else the pipeline's default (turbo when loaded)."""
        if settings.decoder:
            return settings.decoder, settings.decoder_steps
        decoders = self.defaults["decoders"]
        name = "turbo" if "turbo" in decoders else "normal"
        return name, self.defaults["decoder_steps"].get(name)

    def _summary(self, seconds, history, settings: Settings, pictures: int = 0) -> str:
        """One line: time, LLM steps, and the decoder when it ran (`pictures` decoded; an interleaved answer may
        have none, and then no decoder ran)."""
        llm_steps = len(history_steps(history))
        parts = [f"done in {seconds:.2f} s", f"{llm_steps} LLM denoising step{'' if llm_steps == 1 else 's'}"]
        if pictures:
            name, steps = self._decoder(settings)
            parts.append(f"{pictures} picture{'s' if pictures > 1 else ''} by the {name} decoder, {steps} steps")
        if settings.sprint:
            parts.append("SPRINT on")
        return "; ".join(parts)

    def _image_frames(self, history, grid) -> list:
        return [canvas_image(step[0], grid, self.mask_id, self.offset) for step in history_steps(history)]

    def _text_frames(self, history) -> list:
        tokenizer = self.pipe.processor.tokenizer
        return [canvas_text(step[0], tokenizer, self.mask_id, self.eos_id, self.code_range)
                for step in history_steps(history)]

    def text_to_image(self, prompt, thinking, settings: Settings) -> Result:
        prompt = read_text(prompt, "prompt")
        out, seconds = self._call(settings, "t2i", prompt=prompt, thinking=bool(thinking))
        grid = (out.image_tokens[0]["h"], out.image_tokens[0]["w"])
        reasoning = out.text[0] if thinking and out.text else None
        if thinking and not (reasoning or "").strip():
            reasoning = "(the model wrote no reasoning before the picture)"
        return Result(images=list(out.images), text=reasoning, frames=self._image_frames(out.history, grid),
                      summary=self._summary(seconds, out.history, settings, len(out.images)))

    def understand(self, first, second, question, settings: Settings) -> Result:
        images = read_images(first, second, "picture")
        question = read_text(question, "question")
        image = images[0] if len(images) == 1 else [images]  # two pictures: one question about both
        out, seconds = self._call(settings, "understanding", image=image, question=question)
        return Result(text=out.text[0], frames=self._text_frames(out.history),
                      summary=self._summary(seconds, out.history, settings))

    def edit(self, first, second, instruction, settings: Settings) -> Result:
        images = read_images(first, second, "source picture")
        instruction = read_text(instruction, "instruction")
        image = images[0] if len(images) == 1 else [images]
        out, seconds = self._call(settings, "edit", image=image, instruction=instruction)
        grid = (out.image_tokens[0]["h"], out.image_tokens[0]["w"])
        return Result(images=list(out.images), frames=self._image_frames(out.history, grid),
                      summary=self._summary(seconds, out.history, settings, len(out.images)))

    def interleaved(self, prompt, settings: Settings) -> Result:
        prompt = read_text(prompt, "prompt")
        out, seconds = self._call(settings, "interleaved", prompt=prompt, interleaved=True)
        segments = list(out.segments[0])  # text and decoded pictures, in order
        pictures = sum(not isinstance(item, str) for item in segments)
        return Result(segments=segments, frames=self._text_frames(out.history),
                      summary=self._summary(seconds, out.history, settings, pictures))


# ------------------------------------------------------------------------------------------------ the page

INTRO = """# LLaDA2.0-Uni
One masked-diffusion LLM that draws, reads and edits pictures: the LLM denoises image tokens (or text) block by block,
a diffusion decoder turns image tokens into pixels. Model: {model}. Settings start at the model's own defaults."""
HINT_SHAPES = ("This is the tiny model trained on a world of coloured shapes (circles, squares, triangles in red, "
               "green, blue, yellow, purple, orange; left, right, top, bottom, center). Try *a red circle on the "
               "left*.")


def _upload_field(gr, **kwargs):
    """An image upload. Its events run with `preprocess=False`, so the handler gets the uploaded file unopened and the
    processor's loader reads it (`upload_path`): a file that is not a picture gets the page's own message instead of a
    failure inside gradio's preprocessing."""
    return gr.Image(type="filepath", sources=["upload", "clipboard"], format="png", height=288,
                    elem_classes=["llada-picture"], **kwargs)


def upload_path(value):
    """The file (or data URI) of an upload field's raw value (a FileData dict), or the value itself."""
    if isinstance(value, dict):
        return value.get("path") or value.get("url")
    return value


def build_app(pipe, *, title: str = "LLaDA2.0-Uni", frame_delay: float = 0.06, model_name: Optional[str] = None):
    """The Gradio Blocks app over a loaded `LLaDA2UniPipeline` (or a `DemoRunner`); `.launch()` serves it.
    `frame_delay`: seconds between replayed denoising steps."""
    gr = import_gradio()
    runner = pipe if isinstance(pipe, DemoRunner) else DemoRunner(pipe)
    defaults = runner.defaults
    source = str(getattr(runner.pipe.config, "_name_or_path", "") or "")
    shapes = "llada_uni_shapes" in source
    name = f"`{model_name or source or '?'}`" if model_name or not shapes else "the shipped shapes model"

    def failing(function):
        """Bad input -> the page's error message; any other failure -> one line, never a stack trace."""

        def wrapped(*args):
            try:
                yield from function(*args)
            except DemoError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as exc:  # the model failed: say so in one line
                raise gr.Error(f"the model failed: {type(exc).__name__}: {' '.join(str(exc).split())}",
                               print_exception=False) from None

        wrapped.__name__ = function.__name__
        return wrapped

    def replay(frames, render):
        for frame in pick_frames(frames):
            yield render(frame)
            time.sleep(frame_delay)

    with gr.Blocks(title=title) as app:
        gr.Markdown(INTRO.format(model=name))
        if shapes:
            gr.Markdown(HINT_SHAPES)
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                threshold = gr.Slider(0.05, 1.0, value=defaults["threshold"], step=0.01, label="confidence threshold",
                                      info="a masked token is committed once the LLM is this sure of it",
                                      elem_id="setting-threshold")
                guidance = gr.Number(value=defaults["guidance_scale"], label="guidance scale (text-to-image)",
                                     elem_id="setting-guidance")
                edit_guidance = gr.Number(value=defaults["edit_guidance_scale"], label="edit guidance scale",
                                          elem_id="setting-edit-guidance")
            with gr.Row():
                image_steps = gr.Number(value=defaults["image_steps"], precision=0,
                                        label="LLM steps per block (images)", elem_id="setting-image-steps")
                text_steps = gr.Number(value=defaults["steps"], precision=0, label="LLM steps per block (text)",
                                       elem_id="setting-steps")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="setting-seed")
                sprint = gr.Checkbox(value=False, label="SPRINT (faster, approximate)", elem_id="setting-sprint")
            with gr.Row():
                choices = defaults["decoders"]
                decoder = gr.Radio(choices, value=defaults["decoder"], label="decoder",
                                   info="turbo: distilled, few steps; normal: more steps with guidance",
                                   elem_id="setting-decoder", visible=bool(choices))
                decoder_steps = gr.Number(value=defaults["decoder_steps"].get(defaults["decoder"]), precision=0,
                                          label="decoder steps", elem_id="setting-decoder-steps",
                                          visible=bool(choices))
            decoder.change(lambda chosen: defaults["decoder_steps"].get(chosen), decoder, decoder_steps,
                           api_visibility="private")
        settings = [threshold, guidance, edit_guidance, image_steps, text_steps, decoder, decoder_steps, seed, sprint]

        with gr.Tabs(selected="t2i") as tabs:
            with gr.Tab("Text to image", id="t2i"):
                with gr.Row():
                    with gr.Column():
                        t2i_prompt = gr.Textbox(label="prompt", placeholder="a red circle on the left",
                                                elem_id="t2i-prompt")
                        t2i_thinking = gr.Checkbox(label="thinking (reason in text before drawing)",
                                                   elem_id="t2i-thinking")
                        t2i_run = gr.Button("Draw", variant="primary", elem_id="t2i-run")
                        t2i_status = gr.Markdown(elem_id="t2i-status")
                        t2i_reasoning = gr.Textbox(label="reasoning", interactive=False, visible=False,
                                                   elem_id="t2i-reasoning")
                    t2i_canvas = gr.Image(label="denoising: image tokens (grey = masked)", format="png",
                                          interactive=False, height=288, elem_classes=["llada-picture"],
                                          elem_id="t2i-canvas")
                    with gr.Column():
                        t2i_image = gr.Image(label="picture", type="pil", format="png", interactive=False,
                                             height=288, elem_classes=["llada-picture"], elem_id="t2i-image")
                        with gr.Row():
                            t2i_to_ask = gr.Button("Ask about it", size="sm", elem_id="t2i-to-ask")
                            t2i_to_edit = gr.Button("Edit it", size="sm", elem_id="t2i-to-edit")
            with gr.Tab("Understanding", id="ask"):
                with gr.Row():
                    ask_a = _upload_field(gr, label="picture", elem_id="ask-image-a")
                    ask_b = _upload_field(gr, label="second picture (optional)", elem_id="ask-image-b")
                    with gr.Column():
                        ask_question = gr.Textbox(label="question", placeholder="What colour is the circle?",
                                                  elem_id="ask-question")
                        ask_run = gr.Button("Ask", variant="primary", elem_id="ask-run")
                        ask_status = gr.Markdown(elem_id="ask-status")
                        ask_canvas = gr.Textbox(label="denoising: the answer filling in (░ = masked)",
                                                interactive=False, elem_id="ask-canvas")
                        ask_answer = gr.Textbox(label="answer", interactive=False, elem_id="ask-answer")
            with gr.Tab("Editing", id="edit"):
                with gr.Row():
                    with gr.Column():
                        edit_a = _upload_field(gr, label="source picture", elem_id="edit-image-a")
                        edit_b = _upload_field(gr, label="second source (optional)", elem_id="edit-image-b")
                    with gr.Column():
                        edit_instruction = gr.Textbox(label="instruction", placeholder="make the circle blue",
                                                      elem_id="edit-instruction")
                        edit_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                        edit_status = gr.Markdown(elem_id="edit-status")
                        edit_canvas = gr.Image(label="denoising: image tokens (grey = masked)", format="png",
                                               interactive=False, height=288, elem_classes=["llada-picture"],
                                               elem_id="edit-canvas")
                    with gr.Column():
                        edit_image = gr.Image(label="edited picture", type="pil", format="png", interactive=False,
                                              height=288, elem_classes=["llada-picture"], elem_id="edit-image")
                        edit_again = gr.Button("Edit the result again", size="sm", elem_id="edit-again")
            with gr.Tab("Interleaved", id="interleaved"):
                with gr.Row():
                    with gr.Column():
                        inter_prompt = gr.Textbox(label="prompt", placeholder="draw a red circle and describe it",
                                                  elem_id="inter-prompt")
                        inter_run = gr.Button("Generate", variant="primary", elem_id="inter-run")
                        inter_status = gr.Markdown(elem_id="inter-status")
                        inter_canvas = gr.Textbox(label="denoising: the response filling in (░ masked, ▦ image "
                                                  "token)", interactive=False, elem_id="inter-canvas")
                    inter_output = gr.HTML(label="response", elem_id="inter-output")

        @failing
        def run_t2i(prompt, thinking, *values):
            result = runner.text_to_image(prompt, thinking, runner.settings(*values))
            yield from replay(result.frames, lambda frame: (gr.skip(), frame, "denoising...", gr.skip()))
            reasoning = gr.update(value=result.text, visible=result.text is not None)
            yield result.images[0], gr.skip(), result.summary, reasoning

        @failing
        def run_ask(first, second, question, *values):
            first, second = upload_path(first), upload_path(second)
            result = runner.understand(first, second, question, runner.settings(*values))
            yield from replay(result.frames, lambda frame: (gr.skip(), frame, "denoising..."))
            yield result.text, gr.skip(), result.summary

        @failing
        def run_edit(first, second, instruction, *values):
            first, second = upload_path(first), upload_path(second)
            result = runner.edit(first, second, instruction, runner.settings(*values))
            yield from replay(result.frames, lambda frame: (gr.skip(), frame, "denoising..."))
            yield result.images[0], gr.skip(), result.summary

        @failing
        def run_interleaved(prompt, *values):
            result = runner.interleaved(prompt, runner.settings(*values))
            yield from replay(result.frames, lambda frame: (gr.skip(), frame, "denoising..."))
            yield segments_html(result.segments), gr.skip(), result.summary

        def send(tab):
            def handler(image):
                if image is None:
                    raise gr.Error("there is no picture yet: run the task first.", print_exception=False)
                return image, gr.Tabs(selected=tab)
            return handler

        model_events = {"concurrency_id": "model", "concurrency_limit": 1}
        t2i_run.click(run_t2i, [t2i_prompt, t2i_thinking, *settings],
                      [t2i_image, t2i_canvas, t2i_status, t2i_reasoning], api_name="text_to_image", **model_events)
        t2i_prompt.submit(run_t2i, [t2i_prompt, t2i_thinking, *settings],
                          [t2i_image, t2i_canvas, t2i_status, t2i_reasoning], api_visibility="private",
                          **model_events)
        ask_run.click(run_ask, [ask_a, ask_b, ask_question, *settings], [ask_answer, ask_canvas, ask_status],
                      api_name="understand", preprocess=False, **model_events)
        edit_run.click(run_edit, [edit_a, edit_b, edit_instruction, *settings], [edit_image, edit_canvas, edit_status],
                       api_name="edit", preprocess=False, **model_events)
        inter_run.click(run_interleaved, [inter_prompt, *settings], [inter_output, inter_canvas, inter_status],
                        api_name="interleaved", **model_events)
        t2i_to_ask.click(send("ask"), t2i_image, [ask_a, tabs], api_visibility="private")
        t2i_to_edit.click(send("edit"), t2i_image, [edit_a, tabs], api_visibility="private")
        edit_again.click(send("edit"), edit_image, [edit_a, tabs], api_visibility="private")
    return app


# Pictures of a few dozen pixels shown large, cell edges sharp.
CSS = """
.llada-picture img {
    image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;
}
.llada-segment img { image-rendering: pixelated; }
"""


def launch(app, *, host: str = "127.0.0.1", port: Optional[int] = 7860, block: bool = True):
    """Serve `app` (fonts from the system, so the page needs no network); returns the local URL."""
    gr = import_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                           quiet=not block, theme=theme, css=CSS, footer_links=[], ssr_mode=False)
    return url


def load_pipeline(model=None, *, device=None, dtype=None):
    """`LLaDA2UniPipeline` from a converted folder or repo id (default: the shipped shapes model) on `device`
    (default: cuda when available) in `dtype` (default: bfloat16 on cuda, float32 elsewhere; float16 only on cuda)."""
    import torch

    from . import LLaDA2UniPipeline

    if model is None:
        from llada_uni_shapes import model_path

        model = str(model_path())
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"float16 needs a CUDA device (got {device}); use bfloat16 or float32.")
    pipe = LLaDA2UniPipeline.from_pretrained(model, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

__all__ = ["DemoError", "DemoRunner", "Settings", "build_app", "canvas_image", "canvas_text", "import_gradio",
           "launch", "load_pipeline", "model_defaults", "segments_html"]
