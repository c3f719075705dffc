"""How a component trains: ``frozen``, ``full`` or ``lora`` (through peft)."""
from typing import Optional

from torch import nn

TRAIN_MODES = ('frozen', 'full', 'lora')


def check_train_mode(mode: str, key: str) -> str:
    if mode not in TRAIN_MODES:
        raise ValueError(f'{key}={mode!r} is not a train mode; choose one of '
                         f'{", ".join(TRAIN_MODES)}.')
    return mode


def freeze(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def apply_train_mode(module: nn.Module, mode: str,
                     lora_cfg: Optional[dict] = None,
                     key: str = 'train_mode') -> nn.Module:
    """Freeze ``module``, leave it fully trainable, or wrap it with LoRA.

    ``lora_cfg`` holds :class:`peft.LoraConfig` fields (``r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules``...).  ``target_modules='all-linear'``
    puts LoRA on every linear layer, as LLaVA's LoRA recipe does.
    Returns the module to use (a peft model for ``lora``).
    """
    check_train_mode(mode, key)
    if mode == 'full':
        for param in module.parameters():
            param.requires_grad_(True)
        return module
    if mode == 'frozen':
        return freeze(module)
    from peft import LoraConfig, get_peft_model
    if not lora_cfg:
        raise ValueError(f'{key}="lora" needs a lora_cfg, e.g. '
                         "dict(r=8, lora_alpha=16, target_modules='all-linear')")
    freeze(module)
    return get_peft_model(module, LoraConfig(**lora_cfg))
