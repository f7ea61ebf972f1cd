"""The two flow-matching samplers of LLaDA2.0-Uni's decoder (reference §7.4) as one diffusers scheduler.

Time runs the original's way: t = 0 is pure noise, t = 1 is the clean image, and the model predicts the velocity
v = x1 - x0 (so `ZImageTransformer2DModel` output is used as is, not negated as in `ZImagePipeline`).

* normal (`stochastic_ratio=0`): Euler steps x <- x + (t_next - t) * v on linspace(0, 1, N + 1) warped by
  t <- t / (t + s - s*t) with `shift_factor` s = 6; the original's `num_steps=50` grid points are N = 49 steps.
* turbo (`stochastic_ratio=1`, `shift_factor=1`): at each t the model's clean estimate x1 = x + (1 - t) * v is
  re-noised to t_next with fresh Gaussian noise, x <- t_next * x1 + (1 - t_next) * eps; the noise is drawn in
  float64 over the latent's elements, one draw per step (also on the last step, where it is multiplied by 0), which
  is what a seeded `generator` must replay to match the original's global-seed protocol.

Why not `FlowMatchEulerDiscreteScheduler`: its `shift=6` grid equals this one only up to float rounding (it builds the
grid from sigmas in float64 numpy), and its stochastic sampling draws the noise in the model output's dtype, so the
turbo trajectory of the original cannot be replayed with it.
"""

from dataclasses import dataclass
from typing import Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class LLaDA2UniSchedulerOutput(BaseOutput):
    """`prev_sample`: the state at the next time; `pred_original_sample`: the clean-image estimate x + (1 - t) * v."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class LLaDA2UniFlowMatchEulerScheduler(SchedulerMixin, ConfigMixin):
    r"""
    Args:
        shift_factor (`float`, defaults to 6.0): time shift t / (t + s - s*t); 1 leaves the grid uniform.
        stochastic_ratio (`float`, defaults to 0.0): 0 = deterministic Euler ODE (the "normal" decoder); 1 = full
            re-noising from the clean estimate at each step (the "turbo" decoder). In between, the noise added back
            is `(1 - r) * x0_hat + r * eps` with x0_hat = x - t * v the model's own noise estimate.
    """

    order = 1

    @register_to_config
    def __init__(self, shift_factor: float = 6.0, stochastic_ratio: float = 0.0):
        if not shift_factor > 0:
            raise ValueError(f"`shift_factor` must be > 0, got {shift_factor}.")
        if not 0.0 <= stochastic_ratio <= 1.0:
            raise ValueError(f"`stochastic_ratio` must lie in [0, 1], got {stochastic_ratio}.")
        self.times: Optional[torch.Tensor] = None
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None

    @property
    def is_stochastic(self) -> bool:
        return self.config.stochastic_ratio > 0

    @property
    def step_index(self) -> Optional[int]:
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None):
        """Build the grid: `times` holds N + 1 points from 0 to 1, `timesteps` the N at which the model runs."""
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}.")
        if self.is_stochastic:
            # The turbo sampler builds its grid in float64 and hands float32 times to the model.
            times = torch.linspace(0, 1, num_inference_steps + 1, dtype=torch.float64).float()
        else:
            times = torch.linspace(0, 1, num_inference_steps + 1)
        shift = self.config.shift_factor
        if shift != 1.0:
            times = times / (times + shift - shift * times)
        self.times = times.to(device)
        self.timesteps = self.times[:-1]
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep):
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        timestep = torch.as_tensor(timestep, dtype=self.timesteps.dtype, device=self.timesteps.device)
        matches = (self.timesteps == timestep).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep)} is not on the grid set by `set_timesteps`.")
        self._step_index = int(matches[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[Union[torch.Generator, list]] = None,
        return_dict: bool = True,
    ):
        """One step from `timestep` to the next grid point. `model_output` is the velocity; the result keeps
        `sample`'s dtype (keep the state in float32 for normal, float64 for turbo, as the original does)."""
        if self.times is None:
            raise ValueError("call `set_timesteps` before `step`.")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise ValueError(f"`step` called more than `num_inference_steps`={self.num_inference_steps} times.")
        t, t_next = self.times[self._step_index], self.times[self._step_index + 1]
        velocity = model_output.to(sample.dtype)
        clean = sample + (1 - t) * velocity
        if not self.is_stochastic:
            prev_sample = sample + (t_next - t) * velocity
        else:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float64)
            noise = noise.to(sample.dtype)
            ratio = self.config.stochastic_ratio
            if ratio < 1.0:
                noise = (1 - ratio) * (sample - t * velocity) + ratio * noise
            prev_sample = t_next * clean + (1 - t_next) * noise
        self._step_index += 1
        if not return_dict:
            return (prev_sample, clean)
        return LLaDA2UniSchedulerOutput(prev_sample=prev_sample, pred_original_sample=clean)

    def __len__(self):
        return self.num_inference_steps or 0


__all__ = ["LLaDA2UniFlowMatchEulerScheduler", "LLaDA2UniSchedulerOutput"]
