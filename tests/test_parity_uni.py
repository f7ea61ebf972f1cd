"""Image-side parity through the user path: original Uni root -> conversion script -> plain transformers.

The public parity checkpoint is converted with the command-line script; a fresh interpreter that cannot import
`transformers_llada_uni` loads the output with `AutoModel.from_pretrained(out, trust_remote_code=True)` and
`AutoImageProcessor.from_pretrained(out, trust_remote_code=True)`, and reproduces
* the original image tokenizer (`expected/image_tokenizer*.{json,pt}`): pixel values (exact), grids, VQ ids (exact),
  vision features (atol 1e-5), and the ids of both images tokenized in one packed call;
* the LLaDA-Image port's text-to-image loop (`expected/t2i_port.json`) with the image-vocabulary restriction off:
  ids and forward counts exactly, with and without the block cache; with the restriction on, every id is a code.
The subprocess prints one JSON report the tests assert on. Nothing depends on the public shapes, ids or file names:
everything is read from the expected files (the image list, grids, prompts, h/w, steps, threshold, cfg scales).

The last tests run the port's loop (README §6) as a reference on a tiny random composite with other shapes: prompts
of exactly one block and of lengths that are not multiples of 32, outputs spanning two or three blocks, non-square
grids, and an early `<|/image|>`.
"""

import json
import math

import pytest
import torch

from conftest import PARITY_DIR, randomize_expert_bias, run_without_plugin, tiny_config_kwargs

FEATURES_ATOL = 1e-5

_SCRIPT = """
import json, os, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

torch.set_num_threads(1)
folder, root = {folder!r}, {root!r}
expected = os.path.join(root, "expected")
model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
config = model.config
report = {{
    "model_class": type(model).__name__, "model_module": type(model).__module__,
    "processor_class": type(processor).__name__, "processor_module": type(processor).__module__,
    "codebook_size": config.codebook_size, "image_token_offset": config.image_token_offset,
    "image_end_token_id": config.image_end_token_id, "mask_token_id": config.get_text_config().mask_token_id,
}}

# ---- image tokenizer ----
meta = json.load(open(os.path.join(expected, "image_tokenizer.json")))
images, fixtures, report["images"] = [], [], []
for entry in meta["images"]:
    name = os.path.splitext(os.path.basename(entry["file"]))[0]
    fixture = torch.load(os.path.join(expected, f"image_tokenizer_{{name}}.pt"), weights_only=True)
    image = Image.open(os.path.join(root, entry["file"]))
    images.append(image)
    fixtures.append(fixture)
    inputs = processor(images=image, do_resize=False)
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    item = {{
        "name": name, "mode": image.mode, "expected_mode": entry["mode"],
        "pixel_dtype": str(pixels.dtype), "pixel_shape": list(pixels.shape),
        "expected_pixel_shape": list(fixture["pixel_values"].shape),
        "pixel_values_equal": pixels.shape == fixture["pixel_values"].shape
                              and torch.equal(pixels, fixture["pixel_values"]),
        "grid": grid.tolist(), "expected_grid": [entry["grid_thw"]],
        "fixture_grid": [fixture["grid_thw"].tolist()],
        "token_ids": model.get_image_tokens(pixels, grid).tolist(),
        "token_ids_from_fixture_pixels":
            model.get_image_tokens(fixture["pixel_values"], fixture["grid_thw"].view(1, 3)).tolist(),
        "expected_token_ids": entry["token_ids"], "fixture_token_ids": fixture["token_ids"].tolist(),
    }}
    with torch.no_grad():
        features = model.visual(pixel_values=pixels, grid_thw=grid).last_hidden_state
    item["features_shape"] = list(features.shape)
    item["expected_features_shape"] = list(fixture["visual_features"].shape)
    if features.shape == fixture["visual_features"].shape:
        item["features_max_diff"] = (features - fixture["visual_features"]).abs().max().item()
    report["images"].append(item)

packed = processor(images=images, do_resize=False)
ids = model.get_image_tokens(packed["pixel_values"], packed["image_grid_thw"])
sizes = [int(t * h * w) for t, h, w in packed["image_grid_thw"].tolist()]
all_pixels = torch.cat([f["pixel_values"] for f in fixtures])
report["packed"] = {{
    "grids": packed["image_grid_thw"].tolist(),
    "pixel_values_equal": packed["pixel_values"].shape == all_pixels.shape
                          and torch.equal(packed["pixel_values"], all_pixels),
    "token_ids": [part.tolist() for part in ids.split(sizes)],
    "expected_token_ids": meta["encode_batch_token_ids"],
}}

# ---- text-to-image (the LLaDA-Image port) ----
t2i = json.load(open(os.path.join(expected, "t2i_port.json")))
cond, uncond = torch.tensor(t2i["cond_input_ids"]), torch.tensor(t2i["uncond_input_ids"])
settings = dict(uncond_input_ids=uncond, height=t2i["h"], width=t2i["w"], steps=t2i["steps"],
                threshold=t2i["threshold"], block_length=t2i["block_length"])
report["t2i"] = []
for run in t2i["runs"]:
    for use_block_cache in (True, False):
        out = model.generate_image_tokens(cond, cfg_scale=run["cfg_scale"], restrict_to_image_vocab=False,
                                          use_block_cache=use_block_cache, **settings)
        report["t2i"].append({{
            "cfg_scale": run["cfg_scale"], "use_block_cache": use_block_cache,
            "token_ids": out["token_ids"][0].tolist(), "expected_token_ids": run["token_ids"],
            "num_forward_passes": out["num_forward_passes"], "num_forward_calls": run["num_forward_calls"],
        }})
report["t2i_restricted"] = []
for run in t2i["runs"]:
    out = model.generate_image_tokens(cond, cfg_scale=run["cfg_scale"], **settings)
    report["t2i_restricted"].append({{"cfg_scale": run["cfg_scale"], "token_ids": out["token_ids"][0].tolist()}})
# The whole user path: AutoProcessor builds the prompts from the fixture's text, then the model generates.
from transformers import AutoProcessor
full_processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
batch = full_processor(text=t2i["prompt"], mode="t2i", grid=(t2i["h"], t2i["w"]))
report["processor_prompts"] = {{
    "class": type(full_processor).__name__,
    "cond_equal": batch["input_ids"][0].tolist() == t2i["cond_input_ids"],
    "uncond_equal": batch["uncond_input_ids"][0].tolist() == t2i["uncond_input_ids"],
}}
first = t2i["runs"][0]
out = model.generate_image_tokens(batch["input_ids"], uncond_input_ids=batch["uncond_input_ids"],
                                  uncond_attention_mask=batch["uncond_attention_mask"], height=t2i["h"],
                                  width=t2i["w"], steps=t2i["steps"], threshold=t2i["threshold"],
                                  cfg_scale=first["cfg_scale"], restrict_to_image_vocab=False)
report["processor_prompts"]["token_ids_equal"] = out["token_ids"][0].tolist() == first["token_ids"]
report["t2i_fixture"] = {{k: t2i[k] for k in ("h", "w", "mask_token_id", "end_of_image_token_id",
                                              "image_token_offset")}}
print(json.dumps(report))
"""





@pytest.fixture(scope="module")
def report(converted):
    result = run_without_plugin(_SCRIPT.format(folder=str(converted), root=str(PARITY_DIR)))
    return json.loads(result.stdout.strip().splitlines()[-1])


def _summary(entry):
    return json.dumps(entry)[:3000]


def test_loaded_plugin_free_from_the_folder_code(report):
    assert report["model_class"] == "LLaDA2UniForConditionalGeneration", _summary(report)
    assert report["processor_class"] == "LLaDA2UniImageProcessor", _summary(report)
    assert "transformers_modules" in report["model_module"], report["model_module"]
    assert "transformers_modules" in report["processor_module"], report["processor_module"]


def test_config_ids_match_the_fixtures(report):
    fixture = report["t2i_fixture"]
    assert report["mask_token_id"] == fixture["mask_token_id"]
    assert report["image_end_token_id"] == fixture["end_of_image_token_id"]
    assert report["image_token_offset"] == fixture["image_token_offset"]
    image_config = json.loads((PARITY_DIR / "checkpoint" / "image_tokenizer" / "config.json").read_text())
    assert report["codebook_size"] == image_config["vq_config"]["num_embeddings"]


def test_image_processor_matches_the_original(report):
    assert report["images"], "image_tokenizer.json lists no image"
    for item in report["images"]:
        assert item["mode"] == item["expected_mode"], _summary(item)
        assert item["pixel_dtype"] == "torch.float32", _summary(item)
        assert item["pixel_shape"] == item["expected_pixel_shape"], _summary(item)
        assert item["pixel_values_equal"], _summary(item)
        assert item["grid"] == item["expected_grid"] == item["fixture_grid"], _summary(item)


def test_image_token_ids_match_the_original(report):
    for item in report["images"]:
        assert item["expected_token_ids"] == item["fixture_token_ids"], item["name"]  # the fixture agrees with itself
        assert item["token_ids"] == item["expected_token_ids"], _summary(item)
        assert item["token_ids_from_fixture_pixels"] == item["expected_token_ids"], _summary(item)


def test_vision_features_match_the_original(report):
    for item in report["images"]:
        assert item["features_shape"] == item["expected_features_shape"], _summary(item)
        assert item["features_max_diff"] <= FEATURES_ATOL, _summary(item)


def test_packed_images_match_encode_batch(report):
    packed = report["packed"]
    assert packed["grids"] == [item["expected_grid"][0] for item in report["images"]], _summary(packed)
    assert packed["pixel_values_equal"], _summary(packed)
    assert packed["token_ids"] == packed["expected_token_ids"], _summary(packed)


def _port_ids_match(ours, expected, count):
    """The port returns the ids before an early `<|/image|>`; ours keeps h*w slots and fills the rest with -1."""
    return len(ours) == count and ours[: len(expected)] == expected and all(v == -1 for v in ours[len(expected):])


def test_text_to_image_matches_the_port(report):
    fixture = report["t2i_fixture"]
    runs = report["t2i"]
    assert len(runs) == 2 * len(json.loads((PARITY_DIR / "expected" / "t2i_port.json").read_text())["runs"])
    for run in runs:
        assert _port_ids_match(run["token_ids"], run["expected_token_ids"], fixture["h"] * fixture["w"]), \
            _summary(run)
        assert run["num_forward_passes"] == run["num_forward_calls"], _summary(run)


def test_processor_prompts_and_generation_reproduce_the_port(report):
    assert report["processor_prompts"] == {"class": "LLaDA2UniProcessor", "cond_equal": True, "uncond_equal": True,
                                           "token_ids_equal": True}


def test_text_to_image_restricted_to_image_codes(report):
    fixture = report["t2i_fixture"]
    for run in report["t2i_restricted"]:
        ids = run["token_ids"]
        assert len(ids) == fixture["h"] * fixture["w"], _summary(run)
        assert all(0 <= v < report["codebook_size"] for v in ids), _summary(run)


def test_attn_implementation_reaches_the_sub_models(converted):
    from transformers import AutoModel

    import transformers_llada_uni  # noqa: F401  (registers the Auto classes; this test loads in-process)

    model = AutoModel.from_pretrained(converted, dtype=torch.float32, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    assert model.model.config._attn_implementation == "eager"
    assert model.visual.config._attn_implementation == "eager"


# --------------------------------------------------------------------------------------------------------------------
# The port's text-to-image loop as a reference, on other shapes
# --------------------------------------------------------------------------------------------------------------------

OFFSET, CODEBOOK = 96, 32
MASK, EOS, BOS = 90, 91, 89
SOI, EOI, BOI, UNCOND, RESERVED = 80, 81, 82, 83, 40


@pytest.fixture(scope="module")
def tiny_uni():
    from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2UniConfig, LLaDA2UniForConditionalGeneration

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    text = LLaDA2MoeConfig(**tiny_config_kwargs(
        vocab_size=OFFSET + CODEBOOK, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS, bos_token_id=BOS,
        image_token_offset=OFFSET, initializer_range=0.1))
    config = LLaDA2UniConfig(
        text_config=text,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_heads=2, depth=1, patch_size=16, image_size=32),
        vq_config=dict(num_embeddings=CODEBOOK, embed_dim=8, latent_channels=16),
        image_start_token_id=SOI, image_end_token_id=EOI, boi_token_id=BOI, uncondition_token_id=UNCOND,
        reserved_token_start_id=RESERVED,
    )
    torch.manual_seed(0)
    model = LLaDA2UniForConditionalGeneration(config).eval()
    with torch.no_grad():  # confident, varied predictions (as in the fixtures' lm_head gain), EOI a real contender
        model.lm_head.weight.mul_(4.0)
        model.lm_head.weight[OFFSET:].mul_(1.3)
    randomize_expert_bias(model)
    yield model
    torch.set_num_threads(threads)


def port_reference(model, cond, uncond, h, w, cfg_scale, steps, threshold, block_length=32):
    """README §6 (the ComfyUI LLaDA-Image port's generate_vq_tokens), written out: returns (ids, forward calls)."""
    P, count, L = len(cond), h * w, block_length
    pad = P - len(uncond)
    num_blocks = math.ceil((P + count) / L)
    T = L * num_blocks
    x = torch.tensor(cond + [MASK] * (T - P))
    block = torch.arange(T) // L
    allowed = block[:, None] >= block[None, :]
    uncond_allowed = allowed.clone()
    uncond_allowed[:, :pad] = False
    uncond_prefix = torch.tensor([MASK] * pad + uncond)
    pos = torch.arange(T)
    uncond_pos = torch.cat([torch.zeros(pad, dtype=torch.long), torch.arange(T - pad)])
    quota = [L // steps + (1 if s < L % steps else 0) for s in range(steps)]
    calls = 0
    for b in range(P // L, num_blocks):
        end = L * (b + 1)
        for s in range(steps):
            active = x[end - L:end] == MASK
            if not active.any():
                break
            u = x[:end].clone()
            u[:P] = uncond_prefix
            masks = torch.stack([allowed[:end, :end], uncond_allowed[:end, :end]])[:, None]
            additive = torch.zeros(masks.shape).masked_fill(~masks, torch.finfo(torch.float32).min)
            with torch.no_grad():
                logits = model(input_ids=torch.stack([x[:end], u]), attention_mask=additive,
                               position_ids=torch.stack([pos[:end], uncond_pos[:end]])).logits[:, -L:]
            calls += 1
            guided = logits[1] + cfg_scale * (logits[0] - logits[1])
            confidence, tokens = guided.float().softmax(-1).max(-1)
            confidence = torch.where(active, confidence, torch.tensor(float("-inf")))
            above = confidence > threshold
            if int(above.sum()) >= quota[s]:
                commit = above
            else:
                commit = torch.zeros(L, dtype=torch.bool)
                commit[torch.topk(confidence, min(quota[s], int(active.sum()))).indices] = True
            region = x[end - L:end]
            region[commit] = tokens[commit]
            hits = (x[P:] == EOI).nonzero()
            if len(hits):
                stop = P + int(hits[0])
                if not (x[P:stop] == MASK).any():
                    return (x[P:stop] - OFFSET).tolist(), calls
    return (x[P:P + count] - OFFSET).tolist(), calls


def _prompts(length, uncond_length, h, w, seed):
    generator = torch.Generator().manual_seed(seed)
    header = [SOI, RESERVED + h, RESERVED + w, BOI]
    body = torch.randint(0, 40, (length - len(header),), generator=generator).tolist()
    uncond_body = torch.randint(0, 40, (uncond_length - len(header) - 1,), generator=generator).tolist()
    return body + header, uncond_body + [UNCOND] + header


# (cond length, uncond length, h, w): exactly one block with output over two blocks (the hidden fixture's case),
# shorter than a block, longer than one block and not a multiple of 32, a single row, and two whole prompt blocks.
CASES = [(32, 25, 5, 7), (31, 25, 4, 4), (45, 30, 3, 5), (27, 21, 1, 9), (64, 40, 6, 2)]


def _assert_matches_port(model, cond, uncond, h, w, cfg_scale, steps, threshold, expected, calls):
    """Unrestricted generate_image_tokens, cached and uncached, gives the port's ids and forward count."""
    for use_block_cache in (True, False):
        out = model.generate_image_tokens(
            torch.tensor(cond), uncond_input_ids=torch.tensor(uncond), height=h, width=w, cfg_scale=cfg_scale,
            steps=steps, threshold=threshold, restrict_to_image_vocab=False, use_block_cache=use_block_cache)
        ids = out["token_ids"][0].tolist()
        assert _port_ids_match(ids, expected, h * w), (use_block_cache, ids, expected)
        assert out["num_forward_passes"] == calls, (use_block_cache, out["num_forward_passes"], calls)


@pytest.mark.parametrize("cfg_scale", [2.0, 1.0])
@pytest.mark.parametrize("case", CASES, ids=[f"P{c[0]}_U{c[1]}_{c[2]}x{c[3]}" for c in CASES])
def test_text_to_image_matches_the_port_loop_on_other_shapes(tiny_uni, case, cfg_scale):
    cond_length, uncond_length, h, w = case
    cond, uncond = _prompts(cond_length, uncond_length, h, w, seed=sum(case))
    steps, threshold = min(8, h * w), 0.95
    expected, calls = port_reference(tiny_uni, cond, uncond, h, w, cfg_scale, steps, threshold)
    _assert_matches_port(tiny_uni, cond, uncond, h, w, cfg_scale, steps, threshold, expected, calls)
    restricted = tiny_uni.generate_image_tokens(torch.tensor(cond), uncond_input_ids=torch.tensor(uncond), height=h,
                                                width=w, cfg_scale=cfg_scale, steps=steps, threshold=threshold)
    assert restricted["token_ids"].shape == (1, h * w)
    assert ((restricted["token_ids"] >= 0) & (restricted["token_ids"] < CODEBOOK)).all()


# EOI made likelier so that the port's early stop (`<|/image|>` committed with nothing masked before it) happens:
# in the second output block of a one-block prompt, mid-block for a short prompt, and after one token.
EARLY_STOP_CASES = [(3.0, (32, 25, 5, 7), 2.0), (4.0, (27, 21, 1, 9), 1.0), (2.0, (31, 25, 4, 4), 1.0)]


@pytest.mark.parametrize("eoi_gain,case,cfg_scale", EARLY_STOP_CASES,
                         ids=[f"eoi{g}_P{c[0]}_{c[2]}x{c[3]}_cfg{s}" for g, c, s in EARLY_STOP_CASES])
def test_text_to_image_early_end_of_image_matches_the_port(tiny_uni, eoi_gain, case, cfg_scale):
    cond_length, uncond_length, h, w = case
    cond, uncond = _prompts(cond_length, uncond_length, h, w, seed=sum(case))
    steps, threshold = min(8, h * w), 0.95
    original = tiny_uni.lm_head.weight[EOI].clone()
    try:
        with torch.no_grad():
            tiny_uni.lm_head.weight[EOI] *= eoi_gain
        expected, calls = port_reference(tiny_uni, cond, uncond, h, w, cfg_scale, steps, threshold)
        assert len(expected) < h * w  # the case does stop early
        _assert_matches_port(tiny_uni, cond, uncond, h, w, cfg_scale, steps, threshold, expected, calls)
    finally:
        with torch.no_grad():
            tiny_uni.lm_head.weight[EOI] = original
