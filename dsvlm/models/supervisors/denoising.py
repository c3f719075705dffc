"""Clean-image estimates from the UNet: one step, or N DDIM steps."""
from typing import Callable, List, Optional

import torch
from torch import Tensor


def _expand(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def clean_latent_estimate(scheduler, x_t: Tensor, model_output: Tensor,
                          timesteps: Tensor) -> Tensor:
    """``x̂_0`` from the noisy latent and the UNet output at ``timesteps``:
    ``(x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t`` for ε-prediction, ``√ᾱ_t x_t − √(1−ᾱ_t) v̂``
    for v-prediction, the output itself for sample prediction."""
    alpha_bar = _expand(scheduler.alphas_cumprod[timesteps.cpu()], x_t)
    kind = scheduler.config.prediction_type
    if kind == 'epsilon':
        return (x_t - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if kind == 'v_prediction':
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * model_output
    if kind == 'sample':
        return model_output
    raise ValueError(f'unsupported scheduler prediction_type {kind!r}')


def diffusion_target(scheduler, latents: Tensor, noise: Tensor,
                     timesteps: Tensor) -> Tensor:
    """What the UNet is trained to predict (Eq. 3's ε, or v)."""
    kind = scheduler.config.prediction_type
    if kind == 'epsilon':
        return noise
    if kind == 'v_prediction':
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == 'sample':
        return latents
    raise ValueError(f'unsupported scheduler prediction_type {kind!r}')


def ddim_denoise(sampler, predict: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, num_steps: int, start_timestep: Optional[int] = None,
                 on_step: Optional[Callable[[int, Tensor], None]] = None
                 ) -> Tensor:
    """Run ``num_steps`` deterministic DDIM steps (η = 0) from ``x`` and
    return ``x̂_0``.

    Args:
        sampler: a ``DDIMScheduler``.
        predict: ``(x_t, t) -> UNet output``.
        x: the latent at ``start_timestep`` (pure noise when None: start at
            the last training timestep).
        on_step: called with ``(step, x̂_0 estimate)`` after every step (for
            trajectories).
    Gradient flows through every step when autograd is on.
    """
    sampler.set_timesteps(num_steps, device=x.device)
    timesteps = sampler.timesteps
    if start_timestep is not None:
        timesteps = timesteps[timesteps <= start_timestep]
        if len(timesteps) == 0:
            timesteps = sampler.timesteps[-1:]
    estimate = x
    for step, t in enumerate(timesteps):
        t_batch = t.expand(x.shape[0])
        out = sampler.step(predict(x, t_batch), t, x, eta=0.0)
        x, estimate = out.prev_sample, out.pred_original_sample
        if on_step is not None:
            on_step(step, estimate)
    return estimate
