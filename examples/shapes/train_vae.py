"""Stage 2: train the tiny `AutoencoderKL` (FLUX layout: 16 latent channels, 8x down) on shapes images.

Plain VAE objective: reconstruction (mean squared error in [-1, 1]) plus a small KL term that keeps the latent
space smooth for the decoder's flow matching. The scaling / shift factors of the release (0.3611 / 0.1159) stay in the
config; the Z-Image decoder learns in that normalised space, as the release's does.
"""

import torch
import torch.nn.functional as F

from examples.shapes.train_tokenizer import to_target
from examples.shapes.world import render


def train_vae(vae, scenes, *, steps=600, batch_size=16, lr=1e-3, kl_weight=1e-6, seed=0, log=print):
    """Train `vae` in place on renders of `scenes`; returns the final reconstruction error over all of them."""
    torch.manual_seed(seed)
    targets = to_target([render(scene) for scene in scenes])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(1, steps + 1):
        batch = targets[torch.randint(0, len(targets), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        mse = F.mse_loss(reconstruction, batch)
        loss = mse + kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps}: reconstruction {mse.item():.5f}")
    vae.eval()
    with torch.no_grad():
        errors = [F.mse_loss(vae.decode(vae.encode(chunk).latent_dist.mode()).sample, chunk).item()
                  for chunk in targets.split(128)]
    return {"reconstruction_mse": sum(errors) / len(errors), "scenes": len(scenes)}


__all__ = ["train_vae"]
