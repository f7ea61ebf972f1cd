"""The demo's functions without a browser: settings and their defaults read from the model, input checks and their
messages, the denoising frames, the interleaved rendering, the page's handlers, `llada-uni demo` and the Space app."""

import importlib.util
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (a dev dependency)
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffusers_llada_uni import cli  # noqa: E402
from diffusers_llada_uni.demo import (  # noqa: E402
    DemoError,
    DemoRunner,
    Settings,
    build_app,
    import_gradio,
    load_pipeline,
    model_defaults,
    read_image,
    read_images,
    read_text,
)
from diffusers_llada_uni.demo_frames import (  # noqa: E402
    CODE_GLYPH,
    MASK_COLOUR,
    MASK_GLYPH,
    canvas_image,
    canvas_text,
    history_steps,
    pick_frames,
    segments_html,
)
from examples.shapes.checker import by_colour, detect  # noqa: E402
from examples.shapes.world import Scene, Shape, render  # noqa: E402


@pytest.fixture(scope="module")
def runner():
    return DemoRunner(load_pipeline())


def _values(runner, **changes):
    defaults = runner.defaults
    values = {"threshold": defaults["threshold"], "guidance_scale": defaults["guidance_scale"],
              "edit_guidance_scale": defaults["edit_guidance_scale"], "image_steps": defaults["image_steps"],
              "steps": defaults["steps"], "decoder": defaults["decoder"],
              "decoder_steps": defaults["decoder_steps"][defaults["decoder"]], "seed": 0, "sprint": False}
    values.update(changes)
    return [values[name] for name in Settings.FIELDS]


def _picture(colour="red", shape="circle", position="left"):
    return render(Scene((Shape(colour, shape, position),)))


# ------------------------------------------------------------------------------------------------ settings


def test_defaults_come_from_the_model(runner):
    config = runner.pipe.mllm.generation_config
    defaults = runner.defaults
    assert defaults["threshold"] == config.threshold
    assert defaults["guidance_scale"] == config.guidance_scale
    assert defaults["edit_guidance_scale"] == config.edit_guidance_scale == 1.0  # the shapes model's own, not 4.0
    assert defaults["image_steps"] == config.image_steps and defaults["steps"] == config.steps
    assert defaults["decoder"] == "turbo" and defaults["decoder_steps"] == {"normal": 49, "turbo": 8}
    saved = config.threshold
    try:
        config.threshold = 0.7
        assert model_defaults(runner.pipe)["threshold"] == 0.7
    finally:
        config.threshold = saved


def test_settings_name_the_bad_one(runner):
    settings = runner.settings(*_values(runner, sprint=True))
    kwargs = settings.llm_kwargs("t2i")
    assert kwargs["steps"] == runner.defaults["image_steps"] and kwargs["sprint"] is True
    assert kwargs["decoder"] == "turbo" and kwargs["num_inference_steps"] == 8 and kwargs["output_history"]
    assert "guidance_scale" not in settings.llm_kwargs("edit")
    assert settings.llm_kwargs("understanding")["steps"] == runner.defaults["steps"]
    assert "decoder" not in settings.llm_kwargs("understanding")
    cases = {"threshold": (None, "confidence threshold setting is empty"),
             "image_steps": (1.5, "whole number"),
             "steps": (0, r"LLM steps per block \(text\) setting must be >= 1"),
             "seed": (-1, "seed setting must be >= 0"),
             "decoder_steps": (float("nan"), "finite"),
             "decoder": ("fast", "decoder 'fast' is not loaded")}
    for name, (value, message) in cases.items():
        with pytest.raises(DemoError, match=message):
            runner.settings(*_values(runner, **{name: value}))
    with pytest.raises(DemoError, match="confidence threshold setting must be > 0"):
        runner.settings(*_values(runner, threshold=0))


# ------------------------------------------------------------------------------------------------ inputs


def test_bad_inputs_get_one_clear_message(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(DemoError, match=r"the first picture is not a picture this app can read .*notes\.png"):
        read_images(str(fake), None, "picture")
    with pytest.raises(DemoError, match="upload a source picture first"):
        read_images(None, None, "source picture")
    with pytest.raises(DemoError, match="the question is empty"):
        read_text("   ", "question")
    good = tmp_path / "good.png"
    _picture().save(good)
    assert read_image(str(good), "picture").mode == "RGB"
    rgba = tmp_path / "rgba.png"
    _picture().convert("RGBA").save(rgba)
    assert read_image(str(rgba), "picture").mode == "RGB"


def test_runner_refuses_bad_requests_by_name(runner):
    settings = runner.settings(*_values(runner))
    with pytest.raises(DemoError, match="prompt is empty"):
        runner.text_to_image("", False, settings)
    with pytest.raises(DemoError, match="instruction is empty"):
        runner.edit(_picture(), None, " ", settings)


# ------------------------------------------------------------------------------------------------ frames


def test_canvas_colours_codes_and_greys_masks():
    mask, offset = 59, 84
    picture = canvas_image([mask, offset + 3, offset + 3, mask], (2, 2), mask, offset, cell=10)
    assert picture.size == (20, 20)
    assert picture.getpixel((5, 5)) == MASK_COLOUR and picture.getpixel((15, 15)) == MASK_COLOUR
    assert picture.getpixel((15, 5)) == picture.getpixel((5, 15)) != MASK_COLOUR


def test_canvas_text_fills_in(runner):
    tokenizer = runner.pipe.processor.tokenizer
    red = tokenizer("red", add_special_tokens=False).input_ids
    mask, eos = runner.mask_id, runner.eos_id
    assert canvas_text([mask, mask], tokenizer, mask, eos) == MASK_GLYPH * 2
    assert canvas_text(red + [mask, eos, mask], tokenizer, mask, eos) == f"red {MASK_GLYPH}"
    assert canvas_text([runner.offset], tokenizer, mask, eos, runner.code_range) == CODE_GLYPH
    assert pick_frames(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert pick_frames(["a", "a", "b", "b", "a"]) == ["a", "b", "a"]  # steps that changed nothing are not replayed
    grey, same = canvas_image([mask], (1, 1), mask, 0), canvas_image([mask], (1, 1), mask, 0)
    assert pick_frames([grey, same, canvas_image([1], (1, 1), mask, 0)]) == [grey, canvas_image([1], (1, 1), mask, 0)]


def test_segments_render_in_order():
    picture = Image.new("RGB", (4, 4), (200, 0, 0))
    html_text = segments_html(["a <b>", picture, "after"])
    assert html_text.count('class="llada-segment"') == 3 and 'data-count="3"' in html_text
    assert html_text.index('data-kind="text" data-index="0"') < html_text.index('data-kind="image" data-index="1"') \
        < html_text.index('data-kind="text" data-index="2"')
    assert "a &lt;b&gt;" in html_text and "data:image/png;base64," in html_text
    assert 'data-count="0"' in segments_html([])


def test_history_steps_read_the_pipelines_history():
    step = torch.zeros(1, 4, dtype=torch.long)
    per_call = [(step, step), None, (step,)]  # `.history`: one entry per generate call of the pipeline call
    assert len(history_steps(per_call)) == 3 and history_steps(None) == []
    assert len(history_steps((step, step))) == 2  # one generate call's own tuple


def test_summary_names_the_decoder_that_ran(runner):
    history = [(torch.zeros(1, 4, dtype=torch.long),) * 3]
    chosen = runner.settings(*_values(runner, decoder="normal", decoder_steps=20, sprint=True))
    assert runner._summary(1.0, history, chosen, 1) == \
        "done in 1.00 s; 3 LLM denoising steps; 1 picture by the normal decoder, 20 steps; SPRINT on"
    default = runner.settings(*_values(runner, decoder=None))  # none chosen: the pipeline runs its default
    assert "2 pictures by the turbo decoder, 8 steps" in runner._summary(1.0, history, default, 2)
    assert "decoder" not in runner._summary(1.0, history, chosen, 0)  # an answer without pictures decodes none


# ------------------------------------------------------------------------------------------------ tasks


def test_tasks_run_with_the_models_defaults(runner):
    settings = runner.settings(*_values(runner))
    drawn = runner.text_to_image("a red circle on the left and a blue square at the top", False, settings)
    assert drawn.frames and all(frame.size == drawn.frames[0].size for frame in drawn.frames)
    assert "red" in by_colour(detect(drawn.images[0])) and "done in" in drawn.summary
    assert f"{len(drawn.frames)} LLM denoising step" in drawn.summary  # every step of the pipeline's .history
    assert "1 picture by the turbo decoder, 8 steps" in drawn.summary
    answer = runner.understand(drawn.images[0], None, "What colour is the square?", settings)
    assert answer.text == "blue" and answer.frames and "decoder" not in answer.summary
    edited = runner.edit(_picture(), None, "make the circle blue", settings)
    found = by_colour(detect(edited.images[0]))
    assert "blue" in found and "red" not in found
    two = runner.understand(_picture(), _picture("green", "square", "top"), "Which picture has the green square?",
                            settings)
    assert two.text == "second"
    mixed = runner.interleaved("a red circle on the left", settings)
    assert isinstance(mixed.segments, list) and all(isinstance(s, (str, Image.Image)) for s in mixed.segments)
    assert mixed.frames and all(isinstance(frame, str) for frame in mixed.frames)
    pictures = sum(isinstance(s, Image.Image) for s in mixed.segments)
    assert ("turbo decoder" in mixed.summary) == (pictures > 0), (mixed.segments, mixed.summary)
    thought = runner.text_to_image("a red circle on the left", True, settings)
    assert isinstance(thought.text, str) and thought.text


# ------------------------------------------------------------------------------------------------ the page


def _handler(app, api_name):
    for dependency in app.fns.values():
        if dependency.api_name == api_name:
            return dependency.fn
    raise KeyError(api_name)


def test_page_handlers_turn_bad_input_into_page_errors(runner, tmp_path):
    app = build_app(runner, frame_delay=0)
    assert isinstance(app, gr.Blocks)
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {"t2i-prompt", "t2i-canvas", "ask-image-b", "edit-image-b", "inter-output", "setting-sprint"} <= ids
    fake = tmp_path / "fake.png"
    fake.write_text("text")
    settings = _values(runner)
    with pytest.raises(gr.Error, match="first picture is not a picture"):
        list(_handler(app, "understand")(str(fake), None, "What colour is the circle?", *settings))
    with pytest.raises(gr.Error, match="confidence threshold"):
        list(_handler(app, "text_to_image")("a red circle", False, *_values(runner, threshold=None)))
    frames = list(_handler(app, "text_to_image")("a red circle on the left", False, *settings))
    assert isinstance(frames[-1][0], Image.Image) and "done in" in frames[-1][2]


# ------------------------------------------------------------------------------------------------ command and Space


def test_cli_demo_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--model", "--device", "--dtype", "--port", "--host"))
    assert cli.main(["demo", "--port", "70000"]) == cli.EXIT_USAGE
    assert "--port" in capsys.readouterr().err


def test_missing_gradio_is_one_line_before_loading(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[demo\]"'):
        import_gradio()

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load without gradio")

    monkeypatch.setattr(cli, "_load_pipeline", no_load)
    assert cli.main(["demo"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[demo]"' in err


def test_space_app_builds_from_the_environment(monkeypatch):
    from llada_uni_shapes import model_path

    monkeypatch.setenv("LLADA_UNI_MODEL", str(model_path()))
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "space", "app.py")
    spec = importlib.util.spec_from_file_location("space_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the app; serving only happens under __main__
    assert isinstance(module.demo, gr.Blocks)
    assert module.pipe.mllm.dtype == torch.float32
