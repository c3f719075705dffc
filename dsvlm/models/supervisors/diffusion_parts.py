"""The frozen Stable-Diffusion parts: UNet, VAE and noise scheduler.

From a local SD-1.5-style directory (``unet/``, ``vae/``, ``scheduler/``
subfolders) or from architecture configs with random weights.  The
``architecture_only()`` context of :mod:`dsvlm.models.hf_build` applies here
too, so ``tools/inspect_model.py`` builds SD-1.5 on the meta device.
"""
import os
from typing import NamedTuple, Optional

from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler,
                       UNet2DConditionModel)


from ..hf_build import is_architecture_only, resolve_dtype

# SD-1.5's noise schedule (scheduler_config.json of
# runwayml/stable-diffusion-v1-5), the default where no `pretrained`
# directory gives one; the UNet/VAE architectures are written in
# configs/_base_/supervisors/diffusion_sd15.py only.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085,
                      beta_end=0.012, beta_schedule='scaled_linear',
                      prediction_type='epsilon', clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)


class DiffusionParts(NamedTuple):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: DDPMScheduler


def _subfolder(pretrained: str, name: str) -> str:
    path = os.path.join(os.path.expanduser(pretrained), name)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f'diffusion supervisor: {path!r} does not exist. `pretrained` '
            'must be a local Stable-Diffusion-1.5-style directory with '
            '`unet/`, `vae/` and `scheduler/`; dsvlm never downloads '
            'weights. Or build from architecture configs with '
            '`pretrained=None, unet=dict(...), vae=dict(...)`.')
    return path


def _build_model(model_cls, pretrained, name, config, dtype):
    if pretrained and not is_architecture_only():
        kwargs = {} if dtype is None else dict(torch_dtype=dtype)
        return model_cls.from_pretrained(_subfolder(pretrained, name),
                                         local_files_only=True, **kwargs)
    if config is None:
        if pretrained and os.path.isdir(os.path.join(pretrained, name)):
            config = model_cls.load_config(os.path.join(pretrained, name))
        else:
            raise ValueError(f'diffusion supervisor: the {name} needs '
                             '`pretrained` (a local SD directory) or an '
                             f'architecture config `{name}=dict(...)`')
    module = model_cls.from_config(dict(config))
    return module if dtype is None else module.to(dtype)


def build_diffusion_parts(pretrained: Optional[str] = None,
                          unet: Optional[dict] = None,
                          vae: Optional[dict] = None,
                          scheduler: Optional[dict] = None,
                          dtype=None) -> DiffusionParts:
    """UNet, VAE and the DDPM training scheduler (its config also builds the
    DDIM sampler used for multi-step reconstruction)."""
    dtype = resolve_dtype(dtype)
    unet_module = _build_model(UNet2DConditionModel, pretrained, 'unet', unet,
                               dtype)
    vae_module = _build_model(AutoencoderKL, pretrained, 'vae', vae, dtype)
    if pretrained and scheduler is None and not is_architecture_only():
        noise_scheduler = DDPMScheduler.from_pretrained(
            _subfolder(pretrained, 'scheduler'), local_files_only=True)
    else:
        noise_scheduler = DDPMScheduler.from_config(
            dict(SD15_SCHEDULER, **(scheduler or {})))
    return DiffusionParts(unet_module, vae_module, noise_scheduler)


def ddim_sampler(scheduler: DDPMScheduler) -> DDIMScheduler:
    return DDIMScheduler.from_config(scheduler.config)


