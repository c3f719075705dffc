"""Multi-step reconstruction: N DDIM steps, each image from its own timestep,
checked against diffusers' DDIMScheduler run image by image."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from dsvlm.models.supervisors.denoising import ddim_denoise_rows
from dsvlm.models.supervisors.diffusion_parts import (SD15_SCHEDULER,
                                                      ddim_sampler)
from model_factory import TINY_UNET

N = 4
TIMESTEPS = (N - 1, 37, 400, 999)  # the smallest allowed, small, mid, large


def documented_stride(T, t, num_steps):
    """The rule of DiffusionSupervisor's docstring, written out here."""
    return T // math.ceil(T * (num_steps - 1) / t)


@pytest.fixture(scope='module')
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(TINY_UNET).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(len(TIMESTEPS), 4, 8, 8, generator=g)
    cond = torch.randn(len(TIMESTEPS), 5, TINY_UNET['cross_attention_dim'],
                       generator=g)
    return x_t, cond, torch.tensor(TIMESTEPS)


def recording(unet, cond, calls):
    def predict(x, t):
        calls.append(t.clone())
        return unet(x, t, encoder_hidden_states=cond).sample
    return predict


def sampler_for(prediction_type, clip_sample):
    train = DDPMScheduler.from_config(dict(
        SD15_SCHEDULER, prediction_type=prediction_type,
        clip_sample=clip_sample))
    return ddim_sampler(train)


@pytest.mark.parametrize('prediction_type, clip_sample', [
    ('epsilon', False), ('v_prediction', False), ('sample', True)])
@torch.no_grad()
def test_each_row_matches_diffusers_ddim_from_its_own_timestep(
        unet, prediction_type, clip_sample):
    sampler = sampler_for(prediction_type, clip_sample)
    x_t, cond, timesteps = inputs()
    calls = []
    got = ddim_denoise_rows(sampler, recording(unet, cond, calls), x_t,
                            timesteps, N)
    T = sampler.config.num_train_timesteps
    assert len(calls) == N
    for i, t_i in enumerate(TIMESTEPS):
        stride = documented_stride(T, t_i, N)
        assert [int(c[i]) for c in calls] == [t_i - k * stride
                                              for k in range(N)]
        ref = DDIMScheduler.from_config(sampler.config)
        ref.set_timesteps(math.ceil(T * (N - 1) / t_i))
        x = x_t[i:i + 1]
        for k in range(N):
            t = t_i - k * stride
            out = ref.step(unet(x, t, encoder_hidden_states=cond[i:i + 1])
                           .sample, t, x)
            x = out.prev_sample
        torch.testing.assert_close(got[i:i + 1], out.pred_original_sample,
                                   rtol=1e-5, atol=1e-5)


def test_reusing_the_first_output_costs_n_unet_passes_and_keeps_the_result(
        unet):
    sampler = sampler_for('epsilon', False)
    x_t, cond, timesteps = inputs()
    calls = []
    predict = recording(unet, cond, calls)
    with torch.no_grad():
        plain = ddim_denoise_rows(sampler, predict, x_t, timesteps, N)
        first = predict(x_t, timesteps)
        calls.clear()
        reused = ddim_denoise_rows(sampler, predict, x_t, timesteps, N,
                                   first_output=first)
    assert len(calls) == N - 1
    torch.testing.assert_close(reused, plain, rtol=0, atol=0)


def test_gradient_flows_through_every_step(unet):
    sampler = sampler_for('epsilon', False)
    x_t, cond, timesteps = inputs()
    cond.requires_grad_(True)
    calls = []
    predict = recording(unet, cond, calls)
    first = predict(x_t, timesteps).detach()  # only steps 2..N carry grad
    ddim_denoise_rows(sampler, predict, x_t, timesteps, N,
                      first_output=first).sum().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0


def test_too_small_timestep_is_refused(unet):
    x_t, cond, _ = inputs()
    with pytest.raises(ValueError, match=f'timestep >= {N - 1}'):
        ddim_denoise_rows(sampler_for('epsilon', False),
                          recording(unet, cond, []), x_t,
                          torch.tensor([N - 2, 10, 10, 10]), N)
