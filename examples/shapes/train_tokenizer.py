"""Stage 1: train the SigLIP-VQ image tokenizer (the model's `visual` + `vqmodel`) on shapes images.

Objective: the 4 x 4 grid of codes must say what is where, because the decoder draws from the codes alone and the LLM
reads and writes them. So the tokenizer is trained as a VQ autoencoder: the vision transformer's patch features go
through the VQ quantiser (its own straight-through estimator and commitment loss, `GlmImageVQVAEVectorQuantizer`),
and a small throw-away convolutional decoder must reconstruct the 64 px image from the quantised grid. Only the
tokenizer is kept; its codes then stay frozen for every later stage.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from examples.shapes.world import render


class PatchDecoder(nn.Module):
    """Quantised grid [N, D, h, w] -> image [N, 3, 16h, 16w] in [-1, 1] (training aid only)."""

    def __init__(self, embed_dim: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(embed_dim, width, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=4), nn.SiLU(),
            nn.ConvTranspose2d(width, width // 2, 4, stride=4), nn.SiLU(),
            nn.Conv2d(width // 2, 3, 3, padding=1),
        )

    def forward(self, grid):
        return self.net(grid)


def patch_pixels(processor, scenes):
    """Renders of every scene, preprocessed once: (pixel_values [S, h*w, 3*16*16], grid_thw row, targets [S, 3, H, W])."""
    images = [render(scene) for scene in scenes]
    batch = processor.image_processor.preprocess(images, mode="none")
    per_image = batch["pixel_values"].shape[0] // len(images)
    return batch["pixel_values"].reshape(len(images), per_image, -1), batch["image_grid_thw"][0], to_target(images)


def encode(model, pixels, grid):
    """Preprocessed pixels [N, h*w, P] -> (features before the quantiser [N, D, h, w], quantised grid, commitment
    loss, codes [N, h*w]) through the model's own modules."""
    count = pixels.shape[0]
    _, h, w = (int(v) for v in grid)
    features = model.visual(pixel_values=pixels.reshape(-1, pixels.shape[-1]),
                            grid_thw=grid.expand(count, 3)).last_hidden_state
    features = model.vqmodel.quant_conv(features.reshape(count, h, w, -1).permute(0, 3, 1, 2))
    quantised, commitment, codes = model.vqmodel.quantize(features)
    return features, quantised, commitment, codes.reshape(count, -1)


def to_target(images) -> torch.Tensor:
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1.0


@torch.no_grad()
def revive_dead_codes(model, features, usage):
    """Codes no batch chose since the last call restart at random current features: the L2-normalised codebook
    otherwise collapses onto the few codes the untrained encoder happens to hit first."""
    dead = (usage == 0).nonzero().squeeze(1)
    if len(dead):
        pool = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        picks = pool[torch.randint(0, len(pool), (len(dead),))]
        model.vqmodel.quantize.embedding.weight[dead] = picks + 0.01 * torch.randn_like(picks)
    usage.zero_()
    return len(dead)


def train_tokenizer(model, processor, scenes, *, steps=1500, batch_size=64, lr=2e-3, seed=0, revive_every=50,
                    log=print):
    """Train `model.visual` and `model.vqmodel` in place on renders of `scenes`; returns the final metrics."""
    torch.manual_seed(seed)
    pixels, grid, targets = patch_pixels(processor, scenes)
    decoder = PatchDecoder(model.config.vq_config.embed_dim)
    modules = [model.visual, model.vqmodel, decoder]
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    usage = torch.zeros(model.config.vq_config.num_embeddings, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        module.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(scenes), (batch_size,), generator=generator)
        features, quantised, commitment, codes = encode(model, pixels[index], grid)
        reconstruction = F.mse_loss(decoder(quantised), targets[index])
        loss = reconstruction + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        usage += torch.bincount(codes.reshape(-1), minlength=len(usage))
        revived = revive_dead_codes(model, features.detach(), usage) if step % revive_every == 0 and \
            step <= steps * 0.8 else 0
        if step % 100 == 0 or step == steps:
            log(f"tokenizer step {step}/{steps}: reconstruction {reconstruction.item():.4f}, commitment "
                f"{commitment.item():.4f}, codes in batch {codes.unique().numel()}, revived {revived}")
    for module in modules:
        module.eval()
    with torch.no_grad():
        _, quantised, _, codes = encode(model, pixels, grid)
        reconstruction = F.mse_loss(decoder(quantised), targets).item()
    distinct = len({tuple(row.tolist()) for row in codes})
    return {"reconstruction_mse": reconstruction, "codes_used": int(codes.unique().numel()),
            "distinct_scene_codes": distinct, "scenes": len(scenes)}


__all__ = ["encode", "patch_pixels", "train_tokenizer"]
