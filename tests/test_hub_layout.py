"""One folder, two loaders, by repo id: a converted release folder and the shipped shapes model, each put in a real
Hugging Face cache under a repo id, load offline through diffusers' own `DiffusionPipeline` and transformers'
`AutoModel` with the plugin not importable, every component in the requested dtype and every weight stored once."""

import json
import shutil
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, offline_env, run_without_plugin
from llada_uni_shapes import model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(folder, repo_id, cache):
    """The huggingface_hub cache layout (`models--ORG--NAME/{refs/main, snapshots/<commit>/...}`) for `folder`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / COMMIT, symlinks=False)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, converted):
    cache = tmp_path_factory.mktemp("hf-cache")
    put_in_hf_cache(model_path(), "llada-uni/shapes", cache)
    put_in_hf_cache(converted, "llada-uni/parity-uni", cache)
    return cache


def test_converted_folder_has_one_copy_of_every_weight_and_a_card(converted):
    weights = sorted(p.relative_to(converted).as_posix() for p in converted.rglob("*.safetensors"))
    assert [w.split("/")[0] for w in weights if "/" in w] == ["semantic_embedder", "transformer",
                                                               "transformer_turbo", "vae"]
    assert not (converted / "mllm" / "config.json").exists()  # the loader folders hold code only
    card = (converted / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: any-to-any\n")
    assert 'DiffusionPipeline.from_pretrained("' in card and "AutoModel.from_pretrained(" in card
    assert (model_path() / "README.md").read_text().startswith("---\nlibrary_name: transformers")


@pytest.mark.parametrize("repo_id, prompt, question", [
    ("llada-uni/shapes", "a red circle on the left", "What colour is the circle?"),
    ("llada-uni/parity-uni", "a cat", "What is shown?"),
])
def test_diffusers_and_transformers_load_the_repo_id_without_the_plugin(hub_cache, repo_id, prompt, question):
    run_without_plugin(f"""
        import os
        os.environ["HF_HUB_CACHE"] = {str(hub_cache)!r}
        import torch
        from PIL import Image
        from diffusers import DiffusionPipeline
        from transformers import AutoModel, AutoProcessor

        pipe = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True, dtype=torch.bfloat16)
        assert type(pipe).__name__ == "LLaDA2UniPipeline", type(pipe)
        for name in ("mllm", "semantic_embedder", "transformer", "transformer_turbo", "vae"):
            assert getattr(pipe, name).dtype == torch.bfloat16, name
        pipe.set_progress_bar_config(disable=True)
        # The random release model: a small picture and one decoder step keep it quick.
        settings = dict(height=64, width=64, num_inference_steps=1) if "parity" in {repo_id!r} else {{}}
        # Seeded: an unseeded picture of the random release model sometimes drew an empty answer (EOS at once).
        image = pipe({prompt!r}, generator=torch.Generator().manual_seed(0), **settings).images[0]
        assert isinstance(image, Image.Image), type(image)
        answer = pipe(image=image, question={question!r}, max_new_tokens=8).text[0]
        assert isinstance(answer, str) and answer.strip(), answer
        if "shapes" in {repo_id!r}:  # (the random release model would edit a 1024-token grid: slow, no news)
            edited = pipe(image=image, instruction="make the circle blue").images[0]
            assert isinstance(edited, Image.Image)

        model = AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({repo_id!r}, trust_remote_code=True)
        ours = pipe.mllm.state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(value.to(ours[key].dtype), ours[key]), key  # (expert_bias stays float32)
        assert processor.image_processor.patch_size == pipe.processor.image_processor.patch_size
        print("ok", answer)
    """)


def test_our_pipeline_takes_repo_ids_and_hub_arguments(hub_cache):
    from diffusers_llada_uni import LLaDA2UniDecoderPipeline, LLaDA2UniPipeline

    hub = {"cache_dir": hub_cache}  # (HF_HUB_CACHE is read once, when huggingface_hub is imported)
    pipe = LLaDA2UniPipeline.from_pretrained("llada-uni/shapes", revision="main", local_files_only=True, **hub,
                                             torch_dtype={"mllm": torch.bfloat16, "default": torch.float32})
    assert pipe.mllm.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert LLaDA2UniPipeline.from_pretrained("llada-uni/shapes", decoder=None, **hub).decoders == []
    decoder = LLaDA2UniDecoderPipeline.from_pretrained("llada-uni/shapes", torch_dtype=torch.bfloat16, **hub)
    assert decoder.transformer.dtype == torch.bfloat16 and decoder.decoder == "turbo"
    with pytest.raises(ValueError, match="llada-uni/absent"):
        LLaDA2UniPipeline.from_pretrained("llada-uni/absent", **hub)
    with pytest.raises(ValueError, match="llada-uni/shapes"):
        LLaDA2UniPipeline.from_pretrained("llada-uni/shapes", revision="no-such-branch", **hub)


def test_saved_decoder_pipeline_reloads_its_own_decoder(tmp_path):
    from diffusers_llada_uni import LLaDA2UniDecoderPipeline

    normal = LLaDA2UniDecoderPipeline.from_pretrained(model_path(), decoder="normal")
    normal.save_pretrained(tmp_path)
    assert LLaDA2UniDecoderPipeline.from_pretrained(tmp_path).decoder == "normal"  # read from model_index.json
    with pytest.raises(ValueError, match="unsupported"):
        LLaDA2UniDecoderPipeline.from_pretrained(tmp_path, frobnicate=True)


def test_a_plain_copy_of_the_shipped_model_loads_without_the_plugin(tmp_path):
    target = tmp_path / "shapes-copy"
    subprocess.run(["cp", "-r", str(model_path()), str(target)], check=True)
    assert not [p for p in target.rglob("*") if p.is_symlink()]
    run_without_plugin(f"""
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(target)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert pipe("a red circle on the left").images[0].size == (48, 48)
    """)


def test_earlier_layout_still_loads(tmp_path):
    """A folder converted before the rename (decoder/, decoder_turbo/, a `_subfolders` index) keeps loading."""
    from diffusers_llada_uni import LLaDA2UniPipeline

    old = tmp_path / "old"
    shutil.copytree(model_path(), old)
    (old / "transformer").rename(old / "decoder")
    (old / "transformer_turbo").rename(old / "decoder_turbo")
    index = json.loads((old / "model_index.json").read_text())
    index["_class_name"] = "LLaDA2UniPipeline"
    (old / "model_index.json").write_text(json.dumps(index))
    pipe = LLaDA2UniPipeline.from_pretrained(old)
    assert pipe.decoders == ["normal", "turbo"]


def test_converter_takes_a_repo_id_from_the_cache(hub_cache, tmp_path, parity_checkpoint):
    put_in_hf_cache(parity_checkpoint, "inclusionAI/LLaDA2.0-Uni-parity", hub_cache)
    env = {**offline_env(), "HF_HUB_CACHE": str(hub_cache)}
    result = subprocess.run([sys.executable, "conversion/convert_llada2_uni_to_hf.py", "--original",
                             "inclusionAI/LLaDA2.0-Uni-parity", "--output", str(tmp_path / "out"), "--quiet"],
                            cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: inclusionAI/LLaDA2.0-Uni-parity" in card
    missing = subprocess.run([sys.executable, "conversion/convert_llada2_uni_to_hf.py", "--original", "nobody/none",
                              "--output", str(tmp_path / "x")], cwd=REPO_ROOT, capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode != 0 and "nobody/none" in missing.stderr and "Traceback" not in missing.stderr


def test_command_line_takes_a_repo_id_offline(hub_cache, tmp_path):
    env = {**offline_env(), "HF_HUB_CACHE": str(hub_cache)}
    out = tmp_path / "drawn.png"
    result = subprocess.run([sys.executable, "-m", "diffusers_llada_uni.cli", "generate", "a red circle on the left",
                             "-o", str(out), "--model", "llada-uni/shapes", "--device", "cpu", "--dtype", "bfloat16"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_a_vae_config_that_would_blank_every_picture_is_refused(tmp_path):
    from diffusers_llada_uni import LLaDA2UniPipeline

    folder = tmp_path / "bad-vae"
    shutil.copytree(model_path(), folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    config["scaling_factor"] = 0
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="scaling_factor"):
        LLaDA2UniPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="prompt"):
        LLaDA2UniPipeline.from_pretrained(model_path())("   ")


def test_a_failed_save_leaves_the_earlier_save_whole(tmp_path, monkeypatch):
    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline.from_pretrained(model_path())
    target = tmp_path / "saved"
    pipe.save_pretrained(target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert LLaDA2UniPipeline.from_pretrained(target).decoders == ["normal", "turbo"]

    def disk_full(folder, **kwargs):
        (Path(folder) / "diffusion_pytorch_model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (Path(folder) / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipe.vae, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        pipe.save_pretrained(target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".saved.saving-*"))
