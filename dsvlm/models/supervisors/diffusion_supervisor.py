"""DS-VLM's diffusion supervision (Multi-Adapter Diffusion).

A frozen Stable-Diffusion UNet reconstructs the input image, conditioned on
the connector output (text modality) and on low/mid/high encoder layers
(image modality), each through its own adapter, mixed by the MoE
cross-attention (ICA) or fed jointly to the UNet's own cross-attention
(SCA).  The reconstruction is the VAE decode of the one-step clean-latent
estimate (or of N DDIM steps, each image from its own noise level), and its
loss flows straight back into the adapters, the new K/V and router, the
connector and (when trainable) the encoder.  Training only: the VLM's
inference never builds this.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsvlm.registry import SUPERVISORS
from ..features import VisualFeatures
from ..recon_losses import build_recon_loss
from ..train_mode import apply_train_mode
from .adapters import build_adapter
from .denoising import (clean_latent_estimate, ddim_denoise,
                        ddim_denoise_rows, diffusion_target)
from .diffusion_parts import build_diffusion_parts, ddim_sampler
from .moe_cross_attention import (install_moe_cross_attention,
                                  router_probabilities)
from .noise_source import CheckpointedNoise
from .shared_cross_attention import (install_shared_cross_attention,
                                     pack_branch_features)
from .supervisor_settings import (IMAGE_LEVELS, check_features,
                                  check_sampling, resolve_image_layers)



@SUPERVISORS.register_module()
class DiffusionSupervisor(nn.Module):
    """Reconstruct the input image from the VLM's visual features.

    Args:
        encoder_dim, connector_dim, encoder_num_layers, encoder_levels:
            filled in by the VLM (``encoder_levels``: the encoder's
            ``{level: layer}``, e.g. CLIP-L's ``low=8, mid=16, high=24``).
        pretrained: local SD-1.5-style directory (``unet/ vae/ scheduler/``).
        unet, vae, scheduler: architecture configs (random weights) or
            overrides of the scheduler config.
        text_feature: condition on the connector output (TS).
        image_layers: image-modality features (IS): level names among
            ``low/mid/high`` (the encoder's layers for them; the default
            is all three, the paper's), or ``{level: layer}`` with 1-based
            encoder layers of one's own.
        cross_attention: ``'moe'`` (ICA, the paper's) or ``'shared'`` (SCA).
        adapter: ``dict(type='mlp', depth=1)`` or ``dict(type='qformer')``.
        loss: RECON_LOSSES config(s); perceptual by default.
        loss_weight: multiplies every reconstruction term.
        image_size: the side the target image is resized to for the VAE
            (a multiple of the VAE's downsampling factor).
        image_mean, image_std: the normalisation undone to get the target
            image; None (the default): the one the features carry, i.e.
            the model's image processor's.
        timestep_range: training timesteps are drawn from ``[low, high)``.
        sampling_steps: 1 = one-step clean-latent estimate; N > 1 = N DDIM
            steps (η = 0), each image from its own sampled timestep ``t_i``
            with its own stride ``s_i = T // ⌈T (N−1) / t_i⌉`` (``t_i,
            t_i − s_i, …, t_i − (N−1) s_i``), gradient through all: N UNet
            passes per image (the first is the diffusion loss's) and N
            passes of activations unless ``gradient_checkpointing``.  Needs
            ``timestep_range[0] >= N − 1``.
        max_images: reconstruct at most this many images of each batch
            (the first ones with an image); None = all.  Cuts the cost of
            the supervision roughly in proportion.
        unet_train_mode, vae_train_mode: ``'frozen'`` (the paper) or
            ``'full'`` (only where no pretrained SD exists, e.g. the tiny
            world).
        gradient_checkpointing: recompute the UNet's blocks in the backward
            instead of keeping their activations.
    """

    def __init__(self,
                 encoder_dim: int,
                 connector_dim: int,
                 encoder_num_layers: int,
                 encoder_levels: Optional[Dict[str, int]] = None,
                 pretrained: Optional[str] = None,
                 unet: Optional[dict] = None,
                 vae: Optional[dict] = None,
                 scheduler: Optional[dict] = None,
                 text_feature: bool = True,
                 image_layers: Union[Sequence[str],
                                     Dict[str, int]] = IMAGE_LEVELS,
                 cross_attention: str = 'moe',
                 adapter: Optional[dict] = None,
                 loss=None,
                 loss_weight: float = 1.0,
                 image_size: int = 256,
                 image_mean: Optional[Sequence[float]] = None,
                 image_std: Optional[Sequence[float]] = None,
                 timestep_range: Tuple[int, int] = (0, 1000),
                 sampling_steps: int = 1,
                 max_images: Optional[int] = None,
                 unet_train_mode: str = 'frozen',
                 vae_train_mode: str = 'frozen',
                 gradient_checkpointing: bool = False,
                 dtype=None):
        super().__init__()
        # the noise, timesteps and posterior samples: resumed runs redraw
        # them exactly (the draw count is in every checkpoint)
        self.noise = CheckpointedNoise()
        self.image_layers = resolve_image_layers(
            image_layers, encoder_levels, encoder_num_layers)
        check_features(text_feature, self.image_layers, cross_attention)
        self.text_feature = text_feature
        parts = build_diffusion_parts(pretrained, unet, vae, scheduler, dtype)
        self.unet = apply_train_mode(parts.unet, unet_train_mode,
                                     key='supervisor.unet_train_mode')
        self.vae = apply_train_mode(parts.vae, vae_train_mode,
                                    key='supervisor.vae_train_mode')
        self.scheduler = parts.scheduler
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        width = self.unet.config.cross_attention_dim
        adapter = adapter or dict(type='mlp')
        self.adapters = nn.ModuleDict()
        if text_feature:
            self.adapters['text'] = build_adapter(adapter, connector_dim, width)
        for level in self.image_layers:
            self.adapters[level] = build_adapter(adapter, encoder_dim, width)
        if cross_attention == 'moe':
            self.cross_attention = install_moe_cross_attention(
                self.unet, num_image_branches=len(self.image_layers),
                text_branch=text_feature)
        else:
            self.cross_attention = install_shared_cross_attention(self.unet)
        self.recon_loss = build_recon_loss(
            loss if loss is not None else dict(type='PerceptualReconLoss'))
        self.loss_weight = loss_weight
        self.image_size = image_size
        if (image_mean is None) != (image_std is None):
            raise ValueError('supervisor: set both image_mean and image_std, '
                             'or neither (then the features carry them)')
        self.image_normalization = None if image_mean is None else (
            tuple(image_mean), tuple(image_std))
        self.timestep_range = tuple(timestep_range)
        check_sampling(sampling_steps, self.timestep_range,
                       self.scheduler.config)
        self.sampling_steps = sampling_steps
        if max_images is not None and max_images < 1:
            raise ValueError(f'supervisor.max_images={max_images} must be '
                             '>= 1 or None')
        self.max_images = max_images
        self.keep_last = False  # set by ReconVisualizationHook
        self.last_images: Optional[Dict[str, Tensor]] = None

    # ------------------------------------------------------------ pieces
    @property
    def vae_scale(self) -> float:
        return self.vae.config.scaling_factor

    def target_images(self, features: VisualFeatures, rows: Tensor) -> Tensor:
        """The images of ``rows`` with the encoder normalisation undone,
        resized and mapped to the VAE's [-1, 1]."""
        mean, std = self._normalization(features)
        images = features.pixel_values[rows].float() * std + mean
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, ) * 2,
                                   mode='bilinear', align_corners=False,
                                   antialias=True)
        return (images * 2 - 1).clamp(-1, 1).to(self.unet.dtype)

    def _normalization(self, features: VisualFeatures):
        mean, std = self.image_normalization or (features.image_mean,
                                                 features.image_std)
        if mean is None or std is None:
            raise ValueError(
                'DiffusionSupervisor: the image normalisation to undo is '
                'unknown. Give the model the image processor '
                '(model.image_processor, the top-level `image_processor` of '
                'a config) or the supervisor image_mean/image_std.')
        device = features.pixel_values.device
        return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
                torch.tensor(std, device=device).view(1, 3, 1, 1))

    def conditions(self, features: VisualFeatures, rows: Tensor) -> List[Tensor]:
        """Adapted features, text first, then low/mid/high."""
        conds = []
        if self.text_feature:
            conds.append(self.adapters['text'](features.connector_output[rows]))
        layers = features.encoder_layers(list(self.image_layers.values()))
        for level, hidden in zip(self.image_layers, layers):
            conds.append(self.adapters[level](hidden[rows]))
        return [c.to(self.unet.dtype) for c in conds]

    def encode_latents(self, images: Tensor,
                       generator: Optional[torch.Generator] = None) -> Tensor:
        """VAE latents of ``images``: a sample of the posterior drawn with
        ``generator``, or (without one) its mean, drawing no random
        numbers."""
        trainable = any(p.requires_grad for p in self.vae.encoder.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            dist = self.vae.encode(images).latent_dist
        latents = dist.mode() if generator is None else \
            dist.sample(generator=generator)
        return latents * self.vae_scale

    def decode_latents(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.vae_scale).sample

    def _unet(self, conds: List[Tensor]):
        context, kwargs = pack_branch_features(conds)

        def predict(x_t, t):
            return self.unet(x_t, t, encoder_hidden_states=context,
                             cross_attention_kwargs=kwargs).sample

        return predict

    # ------------------------------------------------------------ training
    def loss(self, features: VisualFeatures,
             data_samples=None) -> Dict[str, Tensor]:
        rows = features.has_image
        if rows is None:
            rows = torch.ones(features.pixel_values.shape[0], dtype=torch.bool,
                              device=features.pixel_values.device)
        placeholder = not bool(rows.any())
        if placeholder:
            # No image in the batch: the same modules still run (sharded
            # engines hang otherwise) on the first row, a placeholder, and
            # the losses are multiplied by zero.  No random number is drawn
            # (the noise of a step depends on its count only).  Timestep:
            # the lowest training one.
            rows = torch.arange(len(rows), device=rows.device) == 0
        elif self.max_images is not None:
            rows = rows & (rows.cumsum(0) <= self.max_images)
        target = self.target_images(features, rows)
        # every rank counts the step, an image-less one too (see noise)
        generator = self.noise.next_generator(target.device)
        latents = self.encode_latents(
            target, generator=None if placeholder else generator)
        if placeholder:
            noise = torch.zeros_like(latents)
            timesteps = torch.full((latents.shape[0], ),
                                   self.timestep_range[0], dtype=torch.long,
                                   device=latents.device)
        else:
            noise = torch.randn(latents.shape, generator=generator,
                                device=latents.device, dtype=latents.dtype)
            timesteps = torch.randint(*self.timestep_range,
                                      (latents.shape[0], ),
                                      generator=generator,
                                      device=latents.device)
        x_t = self.scheduler.add_noise(latents, noise, timesteps)
        predict = self._unet(self.conditions(features, rows))
        model_output = predict(x_t, timesteps)
        recon = None
        if self.recon_loss.needs_images:
            if self.sampling_steps > 1:
                x0 = ddim_denoise_rows(ddim_sampler(self.scheduler), predict,
                                       x_t, timesteps, self.sampling_steps,
                                       first_output=model_output)
            else:
                x0 = clean_latent_estimate(self.scheduler, x_t, model_output,
                                           timesteps)
            recon = self.decode_latents(x0)
        losses = self.recon_loss(
            recon.float() if recon is not None else None, target.float(),
            noise=diffusion_target(self.scheduler, latents, noise,
                                   timesteps).float(),
            noise_pred=model_output.float())
        if self.keep_last and recon is not None and not placeholder:
            self.last_images = dict(target=target.detach().float(),
                                    recon=recon.detach().float())
        weight = 0. if placeholder else self.loss_weight
        return {k: v * weight for k, v in losses.items()}

    # ------------------------------------------------------------ insight
    def router_probabilities(self) -> Dict[str, Tensor]:
        """Mean MoE router weights ``P_0..P_k`` per layer, last forward."""
        return router_probabilities(self.cross_attention)

    @torch.no_grad()
    def reconstruct(self, features: VisualFeatures, num_steps: int = 50,
                    num_snapshots: int = 8, seed: int = 0) -> List[Tensor]:
        """Denoise from pure noise to an image in ``num_steps`` DDIM steps
        (the paper's Figure 5).  Returns ``num_snapshots`` decoded images
        ``[B, 3, H, W]`` in [-1, 1] along the trajectory, the last being the
        final reconstruction."""
        rows = torch.ones(features.pixel_values.shape[0], dtype=torch.bool,
                          device=features.pixel_values.device)
        predict = self._unet(self.conditions(features, rows))
        factor = 2**(len(self.vae.config.block_out_channels) - 1)
        shape = (len(rows), self.unet.config.in_channels,
                 self.image_size // factor, self.image_size // factor)
        generator = torch.Generator(device='cpu').manual_seed(seed)
        x = torch.randn(shape, generator=generator).to(
            features.pixel_values.device, self.unet.dtype)
        keep = set(torch.linspace(0, num_steps - 1,
                                  num_snapshots).round().long().tolist())
        snapshots = []

        def on_step(step, estimate):
            if step in keep:
                snapshots.append(self.decode_latents(estimate).float())

        ddim_denoise(ddim_sampler(self.scheduler), predict, x, num_steps,
                     on_step=on_step)
        return snapshots
