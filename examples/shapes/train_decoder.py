"""Stage 3: the Z-Image decoder (normal), then its few-step turbo variant distilled from it.

* normal: flow matching on VAE latents (z = (vae latent - shift) * scale, the space the pipeline decodes from),
  conditioned on the SigVQ embedding of the image's codes: x_t = t x1 + (1 - t) x0 with x0 noise and t in [0, 1]
  (1 = clean), target velocity x1 - x0. The caption features are dropped (set to zeros, what the sampler's
  unconditional branch sees) for 10% of the samples, so classifier-free guidance has something to work with. The
  semantic embedder trains with it.
* turbo: the normal decoder (49-step sampler, CFG 2) draws a target latent for every training image; the turbo
  model, initialised from the normal one, then learns to predict that target from any point t of its 8-step grid
  re-noised with fresh noise, x_t = t x1 + (1 - t) eps, i.e. velocity (x1 - x_t) / (1 - t). That is exactly what the
  turbo sampler asks of it at each step (clean estimate x + (1 - t) v).
"""

import torch
import torch.nn.functional as F

from diffusers_llada_uni.pipeline_llada2_uni_decoder import denoise


def vae_latents(vae, targets, batch_size=128):
    """Images in [-1, 1] -> normalised latents [N, 16, h, w] (the VAE's mode)."""
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    with torch.no_grad():
        return torch.cat([(vae.encode(chunk).latent_dist.mode() - shift) * scale for chunk in targets.split(batch_size)])


def _velocity(transformer, x, t, cap):
    out = transformer(list(x.unsqueeze(2).unbind(0)), t, list(cap.unbind(0)), return_dict=False)[0]
    return torch.stack(out).squeeze(2)


def train_normal(embedder, transformer, codes, latents, grid, *, steps=3000, batch_size=32, lr=1e-3, drop=0.1,
                 seed=0, log=print):
    """Flow-matching training of `transformer` + `embedder` in place on (codes [N, h*w], latents [N, 16, H, W]);
    returns the mean loss of the last 100 steps."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    parameters = list(transformer.parameters()) + list(embedder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    transformer.train()
    embedder.train()
    recent = []
    for step in range(1, steps + 1):
        index = torch.randint(0, len(codes), (batch_size,), generator=generator)
        x1 = latents[index]
        x0 = torch.randn(x1.shape, generator=generator)
        # Half uniform, half warped like the sampler's grid (t / (t + 6 - 6t): dense near the noise end).
        u = torch.rand(batch_size, generator=generator)
        t = torch.where(torch.arange(batch_size) % 2 == 0, u, u / (u + 6 - 6 * u))
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        cap = embedder(codes[index], grid)
        keep = (torch.rand(batch_size, generator=generator) >= drop).float()[:, None, None]
        loss = F.mse_loss(_velocity(transformer, xt, t, cap * keep), x1 - x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 200 == 0 or step == steps:
            log(f"decoder step {step}/{steps}: flow-matching loss {loss.item():.4f}")
    transformer.eval()
    embedder.eval()
    return {"final_loss": round(sum(recent) / len(recent), 4)}


class _Quiet:
    """Just enough of a pipeline for `denoise` (progress bar off, no interrupt)."""

    _interrupt = False

    class _Bar:
        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def update(self):
            pass

    def progress_bar(self, total=None):
        return self._Bar()


def distill_turbo(embedder, teacher, student, scheduler_normal, scheduler_turbo, codes, grid, latent_shape, *,
                  steps=2000, batch_size=32, lr=5e-4, teacher_steps=49, guidance=2.0, seed=0, log=print):
    """Teacher samples for every code grid, then the student learns them on the turbo grid (in place); returns the
    mean loss of the last 100 steps."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        cap = embedder(codes, grid)
        targets = []
        for chunk in range(0, len(codes), 64):
            noise = torch.randn((min(64, len(codes) - chunk), *latent_shape), generator=generator)
            targets.append(denoise(_Quiet(), teacher, scheduler_normal, cap[chunk : chunk + 64], noise,
                                   num_inference_steps=teacher_steps, guidance_scale=guidance))
        targets = torch.cat(targets)
    scheduler_turbo.set_timesteps(8)
    grid_times = scheduler_turbo.timesteps
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    student.train()
    recent = []
    for step in range(1, steps + 1):
        index = torch.randint(0, len(codes), (batch_size,), generator=generator)
        x1 = targets[index]
        t = grid_times[torch.randint(0, len(grid_times), (batch_size,), generator=generator)]
        eps = torch.randn(x1.shape, generator=generator)
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * eps
        target = (x1 - xt) / (1 - t[:, None, None, None])
        loss = F.mse_loss(_velocity(student, xt, t, cap[index]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 200 == 0 or step == steps:
            log(f"turbo step {step}/{steps}: distillation loss {loss.item():.4f}")
    student.eval()
    return {"final_loss": round(sum(recent) / len(recent), 4), "teacher_samples": len(codes)}


__all__ = ["distill_turbo", "train_normal", "vae_latents"]
