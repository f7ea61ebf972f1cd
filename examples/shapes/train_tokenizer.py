"""Stage 1: train the SigLIP-VQ image tokenizer (the model's `visual` + `vqmodel`) on shapes images.

Objective: the 3 x 3 grid of codes must say what is where, because the decoder draws from the codes alone and the LLM
reads and writes them. So the tokenizer is trained as a VQ autoencoder: the vision transformer's patch features go
through the VQ quantiser (its own straight-through estimator and commitment loss, `GlmImageVQVAEVectorQuantizer`),
and a small throw-away decoder must reconstruct the 48 px image from the quantised grid. That decoder sees one code
at a time (1x1 convolutions, non-overlapping upsampling), so each code has to describe its own patch completely and
nothing else: a patch's code then does not depend on its neighbours, which is what lets the LLM compose scenes from
shapes. A linear probe on each quantised code must also name what its patch shows (background, or which colour and
shape), a semantic term in the spirit of SigLIP's: pixel error alone let close colours (orange / yellow) share codes.
Only the tokenizer is kept; its codes then stay frozen for every later stage.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from examples.shapes.world import ALL_COLOURS, CELLS, SHAPES, render

# Patch content classes of the probe: 0 = background, then every (colour, shape).
CONTENTS = [None] + [(colour, shape) for colour in ALL_COLOURS for shape in SHAPES]


def patch_labels(scenes, grid_side: int = 3) -> torch.Tensor:
    """[S, grid_side**2] content class of every patch (row-major), from the scenes themselves."""
    labels = torch.zeros(len(scenes), grid_side * grid_side, dtype=torch.long)
    for row, scene in enumerate(scenes):
        for s in scene.shapes:
            col, cell_row = CELLS[s.position]
            labels[row, cell_row * grid_side + col] = CONTENTS.index((s.colour, s.shape))
    return labels


class PatchDecoder(nn.Module):
    """Quantised grid [N, D, h, w] -> image [N, 3, 16h, 16w] in [-1, 1], each 16 px patch from its own code alone
    (training aid only)."""

    def __init__(self, embed_dim: int, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(embed_dim, width, 1), nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=4), nn.SiLU(),
            nn.ConvTranspose2d(width, width // 2, 4, stride=4), nn.SiLU(),
            nn.Conv2d(width // 2, 3, 1),
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
                    probe_weight=0.1, log=print):
    """Train `model.visual` and `model.vqmodel` in place on renders of `scenes`; returns the final metrics."""
    torch.manual_seed(seed)
    pixels, grid, targets = patch_pixels(processor, scenes)
    labels = patch_labels(scenes, int(grid[1]))
    decoder = PatchDecoder(model.config.vq_config.embed_dim)
    probe = nn.Linear(model.config.vq_config.embed_dim, len(CONTENTS))
    modules = [model.visual, model.vqmodel, decoder, probe]
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
        named = F.cross_entropy(probe(quantised.flatten(2).transpose(1, 2)).flatten(0, 1), labels[index].flatten())
        loss = reconstruction + commitment + probe_weight * named
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        usage += torch.bincount(codes.reshape(-1), minlength=len(usage))
        revived = revive_dead_codes(model, features.detach(), usage) if step % revive_every == 0 and \
            step <= steps * 0.8 else 0
        if step % 100 == 0 or step == steps:
            log(f"tokenizer step {step}/{steps}: reconstruction {reconstruction.item():.4f}, commitment "
                f"{commitment.item():.4f}, probe {named.item():.4f}, codes in batch {codes.unique().numel()}, "
                f"revived {revived}")
    for module in modules:
        module.eval()
    with torch.no_grad():
        _, quantised, _, codes = encode(model, pixels, grid)
        reconstruction = F.mse_loss(decoder(quantised), targets).item()
    distinct = len({tuple(row.tolist()) for row in codes})
    return {"reconstruction_mse": reconstruction, "codes_used": int(codes.unique().numel()),
            "distinct_scene_codes": distinct, "scenes": len(scenes), **code_purity(codes, labels)}


def code_purity(codes, labels) -> dict:
    """How well codes separate patch contents: "shared_codes" = codes used for more than one content (0 is
    lossless), "majority_code_share" = fraction of patches whose code is their content's most common one (1.0
    means every content always gets the same code, whatever its neighbours)."""
    pairs = torch.stack([codes.flatten(), labels.flatten()], 1).unique(dim=0, return_counts=True)
    contents_per_code = torch.bincount(pairs[0][:, 0])
    majority = sum(int(pairs[1][pairs[0][:, 1] == content].max()) for content in pairs[0][:, 1].unique())
    return {"shared_codes": int((contents_per_code > 1).sum()), "majority_code_share": round(majority / codes.numel(),
                                                                                               4)}


__all__ = ["encode", "patch_pixels", "train_tokenizer"]
