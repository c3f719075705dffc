"""Checks of the diffusion supervisor's settings, with errors that name the
config key and the valid choices."""
from collections.abc import Mapping
from typing import Dict, Optional, Sequence, Tuple, Union

CROSS_ATTENTION_MODES = ('moe', 'shared')
IMAGE_LEVELS = ('low', 'mid', 'high')


def resolve_image_layers(image_layers: Union[Sequence[str], Dict[str, int]],
                         encoder_levels: Optional[Dict[str, int]],
                         num_layers: int) -> Dict[str, int]:
    """``{level: layer}`` in low/mid/high order: a dict as given, level names
    through the encoder's levels; every layer within ``1..num_layers``."""
    if isinstance(image_layers, str):
        image_layers = (image_layers, )
    names = list(image_layers)
    unknown = sorted(set(names) - set(IMAGE_LEVELS))
    if unknown:
        raise ValueError(f'supervisor.image_layers: unknown level(s) '
                         f'{unknown}; use {", ".join(IMAGE_LEVELS)}')
    if isinstance(image_layers, Mapping):
        layers = dict(image_layers)
    else:
        missing = [k for k in names if k not in (encoder_levels or {})]
        if missing:
            raise ValueError(
                f'supervisor.image_layers={tuple(names)} names level(s) '
                f'{missing} that the encoder does not define (encoder_levels='
                f'{encoder_levels}); set the encoder\'s `feature_levels` or '
                'give the supervisor {level: layer}')
        layers = {k: encoder_levels[k] for k in names}
    for level, layer in layers.items():
        if not 1 <= layer <= num_layers:
            raise ValueError(f'supervisor.image_layers.{level}={layer}: the '
                             f'encoder has layers 1..{num_layers}')
    return {k: layers[k] for k in IMAGE_LEVELS if k in layers}


def check_features(text_feature: bool, image_layers: Dict[str, int],
                   mode: str) -> None:
    if not text_feature and not image_layers:
        raise ValueError('supervisor: no supervision feature is on; set '
                         'text_feature=True or image_layers')
    if mode not in CROSS_ATTENTION_MODES:
        raise ValueError(f'supervisor.cross_attention={mode!r}; choose '
                         f'one of {", ".join(CROSS_ATTENTION_MODES)}')


def check_sampling(steps: int, timestep_range: Tuple[int, int],
                   scheduler_config) -> None:
    """Training timesteps within the scheduler's, and ``sampling_steps``
    DDIM steps that each have a timestep of their own."""
    low, high = timestep_range
    num_train = scheduler_config.num_train_timesteps
    if not 0 <= low < high <= num_train:
        raise ValueError(f'supervisor.timestep_range={timestep_range} must '
                         f'satisfy 0 <= low < high <= {num_train}')
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f'supervisor.sampling_steps={steps!r} must be an '
                         'integer >= 1 (1 = one-step estimate)')
    if steps > 1 and low < steps - 1:
        raise ValueError(
            f'supervisor.sampling_steps={steps} takes {steps} DDIM steps, '
            'each at its own timestep, from the sampled one, so '
            f'supervisor.timestep_range={timestep_range} must start at '
            f'>= {steps - 1}: set timestep_range=({steps - 1}, {high}) '
            'or lower sampling_steps')
    if steps > 1 and scheduler_config.thresholding:
        raise ValueError('supervisor.sampling_steps > 1 does not support '
                         'supervisor.scheduler.thresholding=True')
