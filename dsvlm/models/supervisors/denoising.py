"""Clean-image estimates from the UNet: one step, N DDIM steps from each
image's own timestep (training), or DDIM from pure noise (visualisation)."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


def _expand(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _roots(alpha_bar: Tensor, like: Tensor) -> Tuple[Tensor, Tensor]:
    """``√ᾱ`` and ``√(1−ᾱ)`` per row, computed in float32 (``1 − ᾱ`` loses
    its digits in bf16) and shaped and typed like ``like``."""
    alpha_bar = alpha_bar.float()
    return (_expand(alpha_bar.sqrt(), like),
            _expand((1 - alpha_bar).sqrt(), like))


def _x0_and_epsilon(kind: str, alpha_bar: Tensor, x_t: Tensor,
                    model_output: Tensor) -> Tuple[Tensor, Tensor]:
    """``(x̂_0, ε̂)`` from the UNet output at ``ᾱ_t`` (one value per row), as
    ``DDIMScheduler.step`` derives them."""
    root_a, root_b = _roots(alpha_bar, x_t)
    if kind == 'epsilon':
        return (x_t - root_b * model_output) / root_a, model_output
    if kind == 'v_prediction':
        return (root_a * x_t - root_b * model_output,
                root_a * model_output + root_b * x_t)
    if kind == 'sample':
        return model_output, (x_t - root_a * model_output) / root_b
    raise ValueError(f'unsupported scheduler prediction_type {kind!r}; use '
                     'epsilon, v_prediction or sample')


def clean_latent_estimate(scheduler, x_t: Tensor, model_output: Tensor,
                          timesteps: Tensor) -> Tensor:
    """``x̂_0`` from the noisy latent and the UNet output at ``timesteps``:
    ``(x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t`` for ε-prediction, ``√ᾱ_t x_t − √(1−ᾱ_t) v̂``
    for v-prediction, the output itself for sample prediction."""
    alpha_bar = scheduler.alphas_cumprod[timesteps.cpu()]
    return _x0_and_epsilon(scheduler.config.prediction_type, alpha_bar, x_t,
                           model_output)[0]


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


def ddim_row_strides(num_train_timesteps: int, timesteps: Tensor,
                     num_steps: int) -> Tensor:
    """The DDIM stride of each row: row ``i`` walks diffusers' ``n_i``-step
    DDIM grid, ``n_i = ⌈T (N−1) / t_i⌉``, stride ``s_i = T // n_i``, so its
    ``N`` steps ``t_i, t_i − s_i, …, t_i − (N−1) s_i`` are all ``>= 0``.
    Needs ``t_i >= N − 1`` (then ``1 <= s_i <= t_i / (N−1)``)."""
    t = timesteps.long()
    if num_steps < 2:
        return torch.zeros_like(t)
    if bool((t < num_steps - 1).any()):
        raise ValueError(f'{num_steps} DDIM steps need every timestep >= '
                         f'{num_steps - 1}; got {t.tolist()}')
    grid = (num_train_timesteps * (num_steps - 1) + t - 1) // t  # ceil
    return num_train_timesteps // grid


def ddim_denoise_rows(sampler, predict: Callable[[Tensor, Tensor], Tensor],
                      x_t: Tensor, timesteps: Tensor, num_steps: int,
                      first_output: Optional[Tensor] = None) -> Tensor:
    """``num_steps`` deterministic DDIM steps (η = 0), each row from its own
    timestep along its own stride (:func:`ddim_row_strides`); returns the
    ``x̂_0`` of the last step, i.e. of the ``num_steps``-th UNet evaluation.

    Args:
        sampler: a ``DDIMScheduler`` (its ``alphas_cumprod``,
            ``final_alpha_cumprod``, ``prediction_type`` and ``clip_sample``
            are used; its timestep grid is not).
        predict: ``(x, t [B]) -> UNet output``, one batched call per step.
        x_t: the noisy latents, row ``i`` at ``timesteps[i]``.
        first_output: ``predict(x_t, timesteps)`` if already computed (the
            diffusion loss needs it): then only ``num_steps − 1`` calls.
    Each update is ``DDIMScheduler.step``'s; gradient flows through every
    step when autograd is on.
    """
    config = sampler.config
    if config.thresholding:
        raise ValueError('ddim_denoise_rows: the sampler config has '
                         'thresholding=True, which is not supported')
    if num_steps < 1:
        raise ValueError(f'num_steps={num_steps} must be >= 1')
    t = timesteps.long().to(x_t.device)
    strides = ddim_row_strides(config.num_train_timesteps, t, num_steps)
    alphas = sampler.alphas_cumprod.to(x_t.device)
    final_alpha = sampler.final_alpha_cumprod.to(x_t.device)

    def estimates(x, t, output):
        x0, eps = _x0_and_epsilon(config.prediction_type, alphas[t], x,
                                  output)
        if config.clip_sample:  # x̂_0 only, as DDIMScheduler.step does
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        return x0, eps

    x, output = x_t, first_output
    for _ in range(num_steps - 1):
        x0, eps = estimates(x, t, predict(x, t) if output is None else output)
        t = t - strides
        root_a, root_b = _roots(torch.where(
            t >= 0, alphas[t.clamp(min=0)], final_alpha), x)
        x = root_a * x0 + root_b * eps
        output = None
    return estimates(x, t, predict(x, t) if output is None else output)[0]


def ddim_denoise(sampler, predict: Callable[[Tensor, Tensor], Tensor],
                 x: Tensor, num_steps: int,
                 on_step: Optional[Callable[[int, Tensor], None]] = None
                 ) -> Tensor:
    """Generate from pure noise ``x`` along diffusers' own ``num_steps``-step
    DDIM grid (η = 0) and return ``x̂_0`` (visualisation, the paper's
    Figure 5).

    Args:
        sampler: a ``DDIMScheduler``.
        predict: ``(x_t, t) -> UNet output``.
        on_step: called with ``(step, x̂_0 estimate)`` after every step (for
            trajectories).
    """
    sampler.set_timesteps(num_steps, device=x.device)
    estimate = x
    for step, t in enumerate(sampler.timesteps):
        t_batch = t.expand(x.shape[0])
        out = sampler.step(predict(x, t_batch), t, x, eta=0.0)
        x, estimate = out.prev_sample, out.pred_original_sample
        if on_step is not None:
            on_step(step, estimate)
    return estimate
