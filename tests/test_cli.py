"""`llada-uni` on an untrained tiny model of the shapes world: each command writes its output, and bad input ends in
one `error:` line with a non-zero status, never a traceback."""

import pytest
from PIL import Image

from diffusers_llada_uni.cli import main
from examples.shapes.factory import save_untrained


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_untrained(tmp_path_factory.mktemp("cli") / "shapes"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (48, 48), (220, 20, 20)).save(path)
    return str(path)


def test_commands_write_their_outputs(model_dir, picture, tmp_path, capsys):
    fast = ["--model", model_dir, "--decoder-steps", "1", "--threads", "1"]
    assert main(["generate", "a red circle on the left", "-o", str(tmp_path / "out.png"), *fast]) == 0
    assert Image.open(tmp_path / "out.png").size == (48, 48)
    assert main(["edit", picture, "make the circle blue", "-o", str(tmp_path / "edited.png"), *fast]) == 0
    assert Image.open(tmp_path / "edited.png").size == (48, 48)
    assert main(["ask", picture, "What colour is the circle?", "--model", model_dir, "--max-new-tokens", "16"]) == 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["ask", "{picture}", "What?", "--model", "/nonexistent/model"], "is not a folder"),
        (["ask", "/nonexistent.png", "What?", "--model", "{model}"], "cannot read the image"),
        (["ask", "{not_an_image}", "What?", "--model", "{model}"], "cannot read the image"),
        (["generate", "a cat", "-o", "/nonexistent/dir/out.png", "--model", "{model}"], "does not exist"),
        (["generate", " ".join(["red"] * 600), "-o", "{out}", "--model", "{model}"], "max_position_embeddings"),
        (["generate", "a cat", "-o", "{out}", "--model", "{model}", "--height", "50"], "height"),
    ],
)
def test_bad_input_is_one_error_line(model_dir, picture, tmp_path, capsys, argv, match, monkeypatch):
    monkeypatch.delenv("LLADA_UNI_MODEL", raising=False)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    values = {"picture": picture, "model": model_dir, "not_an_image": str(not_an_image),
              "out": str(tmp_path / "x.png")}
    code = main([arg.format(**values) for arg in argv])
    err = capsys.readouterr().err  # progress bars of model loading may come first
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert match in errors[0] and "Traceback" not in err


def test_without_model_the_shipped_one_is_used(capsys, monkeypatch):
    import llada_uni_shapes

    monkeypatch.delenv("LLADA_UNI_MODEL", raising=False)
    assert main(["ask", "x.png", "What?"]) == 2  # the shipped model is found; the missing picture is the error
    assert "x.png" in capsys.readouterr().err
    monkeypatch.setattr(llada_uni_shapes, "MODEL_DIR", llada_uni_shapes.MODEL_DIR.parent / "not-installed")
    assert main(["ask", "x.png", "What?"]) == 2
    err = capsys.readouterr().err
    assert "pass --model" in err and "not installed" in err
