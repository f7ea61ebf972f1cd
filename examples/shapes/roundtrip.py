"""Round-tripped codes: a scene's codes drawn by the turbo decoder, then read back by the image tokenizer.

When a user asks about or edits a picture the model drew, the LLM sees these codes, not the codes of a clean render:
the decoder's background is close to the renderer's but not equal, and the tokenizer has several "empty" codes that
it picks by context. An LLM trained on clean codes only edits its own drawings far worse (docs/shapes.md), so the
later LLM cycles see some understanding and editing sources in this form.
"""

import torch

from diffusers_llada_uni import LLaDA2UniDecoderPipeline
from examples.shapes.train_tokenizer import encode


@torch.no_grad()
def roundtrip_codes(model, processor, pixel: dict, grids: dict, scenes, *, batch_size=128, seed=0) -> dict:
    """{scene: {"token_ids", "h", "w"}}: `grids[scene]` decoded by the turbo decoder (one noise draw per scene, at
    the size the model draws) and encoded again by the model's own tokenizer."""
    decoder = LLaDA2UniDecoderPipeline(semantic_embedder=pixel["semantic_embedder"],
                                       transformer=pixel["transformer_turbo"], vae=pixel["vae"],
                                       scheduler=pixel["scheduler_turbo"])
    decoder.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        h, w = grids[chunk[0]]["h"], grids[chunk[0]]["w"]
        codes = torch.stack([grids[scene]["token_ids"] for scene in chunk])
        images = decoder(codes, (h, w), resolution_multiplier=1, generator=generator).images
        batch = processor.image_processor.preprocess(images, mode="none")
        pixels = batch["pixel_values"].reshape(len(images), h * w, -1)
        again = encode(model, pixels, batch["image_grid_thw"][0])[3]
        out.update({scene: {"token_ids": row, "h": h, "w": w} for scene, row in zip(chunk, again)})
    return out


__all__ = ["roundtrip_codes"]
