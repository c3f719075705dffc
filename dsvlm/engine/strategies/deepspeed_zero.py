"""DeepSpeed ZeRO-2/3 for a VLM: MMEngine's ``DeepSpeedStrategy``, fixed.

What MMEngine's strategy gets wrong for a VLM, and what this one does:

* **Clipping nobody asked for.**  DeepSpeed 0.19.8 clips the gradient norm
  at 1.0 when its config has no ``gradient_clipping``
  (``GRADIENT_CLIPPING_DEFAULT`` in ``deepspeed/runtime/constants.py``); a
  config without ``optim_wrapper.clip_grad`` then trains differently from
  the same config under MMEngine's ``OptimWrapper``.  Here no
  ``gradient_clipping`` means no clipping.
* **Casting integer inputs.**  ``inputs_to_half`` casts every tensor of the
  named inputs, ``input_ids`` included.  Here only floating-point tensors
  (``pixel_values``) are cast, to the engine's bf16/fp16, without naming
  keys (:class:`VLMDeepSpeedEngineWrapper`).
* **Device under ZeRO-3.**  DeepSpeed skips ``module.to(device)`` for a
  model built under ``zero.Init``: the data preprocessor would keep moving
  batches to the CPU, and buffers of modules built outside ``zero.Init``
  (the connector, diffusers' UNet/VAE, the VGG) would stay there.  Both are
  moved to the engine's device after wrapping.
* **Building a 7B LLM under ZeRO-3.**  While the model is built, a
  ``transformers`` ``HfDeepSpeedConfig`` is alive, so ``from_pretrained`` /
  ``_from_config`` create the HF LLM and vision tower partitioned
  (``zero.Init``) instead of whole on every rank.  diffusers' UNet/VAE, the
  VGG and the connector do not consult it and are built whole (the log
  says which part was built how); ``deepspeed.initialize`` then partitions
  them.  DeepSpeed casts no parameter to bf16/fp16 in a model partly built
  under ``zero.Init``, so this strategy casts the whole-built ones (else
  ZeRO-3's optimizer fails on a parameter group of mixed dtypes).
  ``'auto'`` sizes are filled from the LLM's hidden size as transformers'
  Trainer does.
* **Frozen parameters** are not saved (``exclude_frozen_parameters=True``)
  and, under ZeRO-3, those under ``replicate_frozen`` are kept whole on
  every rank (``ds_persist``, and in the engine's list of persistent
  parameters): they never change, so partitioning them only adds
  all-gathers to every forward and backward.  DeepSpeed still partitions
  every parameter at an optimizer step and a checkpoint and gathers the
  persistent ones right after (one all-gather per optimizer step), and
  releases all parameters after use while it records its module trace
  (the first micro-step, and again after the module order changed).

:func:`deepspeed_checkpoint_to_state_dict` turns a saved checkpoint
directory into the plain trainable-only state dict (CPU, no process group).
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import deepspeed
import torch
from mmengine._strategy import DeepSpeedStrategy
from mmengine._strategy.deepspeed import MMDeepSpeedEngineWrapper
from mmengine.utils import apply_to
from torch import nn

from dsvlm.engine.compat import (safe_deepspeed_checkpoint_engine,
                                 safe_zero_to_fp32)
from dsvlm.registry import MODEL_WRAPPERS, STRATEGIES

# 'auto' sizes, filled from the LLM hidden size h as transformers' Trainer
# does (``HfTrainerDeepSpeedConfig.trainer_config_finalize``)
AUTO_SIZES = {
    'reduce_bucket_size': lambda h: h * h,
    'stage3_prefetch_bucket_size': lambda h: int(0.9 * h * h),
    'stage3_param_persistence_threshold': lambda h: 10 * h,
}
# frozen parts kept whole under ZeRO-3 by default: the encoder, the
# connector and the supervisors (DS-VLM's UNet, VAE, VGG).  A frozen LLM
# (LoRA) stays partitioned: there partitioning saves 2 bytes x 7B per rank.
REPLICATED_FROZEN = ('vision_encoder', 'connector', 'supervisors')


def _is_floating(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@MODEL_WRAPPERS.register_module()
class VLMDeepSpeedEngineWrapper(MMDeepSpeedEngineWrapper):
    """``MMDeepSpeedEngineWrapper`` that casts floating-point inputs only.

    Under bf16/fp16 every floating-point tensor of the batch except
    ``data_samples`` (or of the keys/indices in ``inputs_to_half`` when
    given) is cast to the engine's dtype; integer and bool tensors
    (``input_ids``, ``labels``, masks) are left alone.  In fp32 nothing is
    cast.
    """

    @property
    def half_dtype(self) -> Optional[torch.dtype]:
        if self.model.bfloat16_enabled():
            return torch.bfloat16
        if self.model.fp16_enabled():
            return torch.float16
        return None

    def _cast_inputs_half(self, inputs):
        dtype = self.half_dtype
        if dtype is None:
            return inputs

        def cast(value):
            return apply_to(value, _is_floating, lambda x: x.to(dtype))

        def selected(key):
            if self._inputs_to_half is not None:
                return key in self._inputs_to_half
            return key != 'data_samples'

        if isinstance(inputs, dict):
            return {k: cast(v) if selected(k) else v
                    for k, v in inputs.items()}
        if isinstance(inputs, (list, tuple)):
            return type(inputs)(cast(v) if selected(i) else v
                                for i, v in enumerate(inputs))
        raise TypeError('the data preprocessor should return a dict, list or '
                        f'tuple, but returned {type(inputs)}')


@STRATEGIES.register_module()
class DeepSpeedZeroStrategy(DeepSpeedStrategy):
    """MMEngine's ``DeepSpeedStrategy`` made right for a VLM (see the module
    docstring).  Takes every argument of ``DeepSpeedStrategy``, and:

    Args:
        exclude_frozen_parameters: leave frozen weights out of checkpoints
            (they come back from the ``pretrained`` directories).
            Defaults to True.
        replicate_frozen: under ZeRO-3, frozen parameters to keep whole on
            every rank: True (all), False (none) or module name prefixes.
            Defaults to the encoder, connector and supervisors.
    """

    def __init__(self,
                 *,
                 exclude_frozen_parameters: bool = True,
                 replicate_frozen: Union[bool, Sequence[str]] = (
                     REPLICATED_FROZEN),
                 **kwargs):
        super().__init__(exclude_frozen_parameters=exclude_frozen_parameters,
                         **kwargs)
        self.config.setdefault('gradient_clipping', 0.0)
        self.replicate_frozen = replicate_frozen
        self._hf_deepspeed_config = None

    @property
    def zero_stage(self) -> int:
        return int((self.config.get('zero_optimization') or {}).get(
            'stage', 0))

    # ------------------------------------------------------------ building
    def build_model(self, model: Union[nn.Module, dict]) -> nn.Module:
        """Build under ZeRO-3 with a live ``HfDeepSpeedConfig``, so that
        transformers partitions HF modules as it creates them.  It stays
        alive with the strategy: transformers also reads it later (e.g.
        ``generate`` keeps ranks in step under ZeRO-3)."""
        if self.zero_stage == 3 and not isinstance(model, nn.Module):
            from transformers.integrations import HfDeepSpeedConfig
            self._fill_micro_batch()  # zero.Init checks the batch sizes
            self._hf_deepspeed_config = HfDeepSpeedConfig(self.config)
        model = super().build_model(model)
        if self._hf_deepspeed_config is not None:
            self.logger.info(describe_zero_init(model))
        return model

    def _wrap_model(self, model: nn.Module):
        self._fill_micro_batch()
        self._fill_auto_sizes(model)
        if self.zero_stage == 3:
            self._apply_persistence_threshold(model)
            cast_whole_parameters(model, self.half_dtype)
        wrapper = getattr(self, 'optim_wrapper', None)
        if wrapper is not None:  # DeepSpeed's optimizer replaces the client's
            engine, wrapper.optimizer, *_ = deepspeed.initialize(
                model=model, optimizer=wrapper.optimizer, config=self.config)
        else:
            engine, *_ = deepspeed.initialize(model=model, config=self.config)
        move_to_device(model, engine.device)
        if self.zero_stage == 3 and self.replicate_frozen:
            replicate_frozen_parameters(engine, self.replicate_frozen)
        return VLMDeepSpeedEngineWrapper(model=engine,
                                         inputs_to_half=self._inputs_to_half)

    # ------------------------------------------------------------ loading
    def load_checkpoint(self, filename: str, **kwargs) -> dict:
        """MMEngine's, reading the files safely (``weights_only=True``,
        allow-listed types) and failing with the directory's name when it
        is not a DeepSpeed checkpoint."""
        check_deepspeed_checkpoint(filename)
        with safe_deepspeed_checkpoint_engine(self.model.model):
            return super().load_checkpoint(filename, **kwargs)

    def resume(self, filename: str, **kwargs) -> dict:
        """MMEngine's, reading the files safely (see ``load_checkpoint``)."""
        check_deepspeed_checkpoint(filename)
        with safe_deepspeed_checkpoint_engine(self.model.model):
            return super().resume(filename, **kwargs)

    @property
    def half_dtype(self) -> Optional[torch.dtype]:
        for key, dtype in (('bf16', torch.bfloat16), ('fp16', torch.float16)):
            if (self.config.get(key) or {}).get('enabled', False):
                return dtype
        return None

    def _fill_micro_batch(self) -> None:
        """The dataloader's batch size (FlexibleRunner passes it), unless
        the config states one."""
        micro = self.dispatch_kwargs.get('train_micro_batch_size_per_gpu')
        if micro is not None:
            self.config.setdefault('train_micro_batch_size_per_gpu', micro)

    def _fill_auto_sizes(self, model: nn.Module) -> None:
        zero = self.config.get('zero_optimization') or {}
        auto = [k for k in AUTO_SIZES if zero.get(k) == 'auto']
        if not auto:
            return
        hidden = hidden_size_of(model)
        if hidden is None:
            raise ValueError(
                f'strategy.zero_optimization: {", ".join(auto)} = "auto" '
                f'needs the LLM hidden size, but {type(model).__name__} has '
                'no `llm.hidden_size` or `config.hidden_size`; set numbers.')
        for key in auto:
            zero[key] = AUTO_SIZES[key](hidden)
        self.logger.info(f'DeepSpeed sizes from hidden size {hidden}: ' +
                         ', '.join(f'{k}={zero[k]}' for k in auto))

    def _apply_persistence_threshold(self, model: nn.Module) -> None:
        """``zero.Init`` marked parameters persistent by the threshold it
        saw while building (DeepSpeed's default where the config said
        'auto'); re-mark them by the filled one, as the engine would."""
        zero = self.config.get('zero_optimization') or {}
        threshold = zero.get('stage3_param_persistence_threshold')
        if threshold is None:
            return
        for param in model.parameters():
            if hasattr(param, 'ds_persist'):
                param.ds_persist = param.ds_numel <= int(threshold)


def hidden_size_of(model: nn.Module) -> Optional[int]:
    """The LLM hidden size of a VLM (``model.llm.hidden_size``), or of an HF
    model (``model.config.hidden_size``)."""
    hidden = getattr(getattr(model, 'llm', None), 'hidden_size', None)
    if hidden is None:
        hidden = getattr(getattr(model, 'config', None), 'hidden_size', None)
    return hidden


def describe_zero_init(model: nn.Module) -> str:
    """Which top-level parts were built partitioned (by transformers under
    ``zero.Init``) and which whole (to be partitioned, or replicated when
    frozen, by ``deepspeed.initialize``)."""
    partitioned, whole = [], []
    for name, child in model.named_children():
        params = list(child.parameters())
        if params:
            built = sum(hasattr(p, 'ds_id') for p in params)
            target = partitioned if built == len(params) else whole
            target.append(name if built in (0, len(params)) else
                          f'{name} ({built}/{len(params)} partitioned)')
    return ('ZeRO-3 build: partitioned as built (zero.Init): '
            f'{", ".join(partitioned) or "none"}; built whole: '
            f'{", ".join(whole) or "none"}')


def cast_whole_parameters(model: nn.Module,
                          dtype: Optional[torch.dtype]) -> None:
    """Cast the floating-point parameters built whole (not under
    ``zero.Init``) to ``dtype``.

    DeepSpeed casts a model's parameters to bf16/fp16 only when none of them
    was built under ``zero.Init`` (``_cast_module_mixed_precision``); in a
    VLM whose HF parts were, the connector and supervisors would stay fp32
    and ZeRO-3's optimizer fails on the mixed dtypes of a parameter group
    (``assert len(set(t.dtype for t in tensors)) == 1`` in ``defragment``).
    Buffers are left alone, as DeepSpeed leaves them.
    """
    if dtype is None:
        return
    for param in model.parameters():
        if (not hasattr(param, 'ds_id') and param.is_floating_point()
                and param.dtype != dtype):
            param.data = param.data.to(dtype)


def move_to_device(model: nn.Module, device) -> None:
    """Move every buffer and the data preprocessor's device to ``device``,
    leaving parameters (DeepSpeed's) alone."""
    device = torch.device(device)
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)
    preprocessor = getattr(model, 'data_preprocessor', None)
    if preprocessor is not None and hasattr(preprocessor, '_device'):
        preprocessor._device = device


def frozen_parameters(model: nn.Module,
                      prefixes: Union[bool, Sequence[str]]) -> List:
    """Frozen parameters of ``model`` under the given module prefixes (all
    for True)."""
    return [param for name, param in model.named_parameters()
            if not param.requires_grad and (prefixes is True or any(
                name.startswith(prefix.rstrip('.') + '.')
                for prefix in prefixes))]


def replicate_frozen_parameters(engine, prefixes) -> List:
    """Gather the chosen frozen parameters of a ZeRO-3 engine and keep them
    whole: ``ds_persist`` stops the engine from releasing them after each
    module, and the list of persistent parameters makes it gather them
    again after every optimizer step and checkpoint (when it partitions
    everything).  Returns the parameters."""
    params = frozen_parameters(engine.module, prefixes)
    persistent = getattr(engine.optimizer, 'persistent_parameters', None)
    if not params or persistent is None:
        return []
    known = {id(p) for p in persistent}
    for param in params:
        param.ds_persist = True
        if id(param) not in known:
            persistent.append(param)
    params[0].all_gather(param_list=params)
    return params


# ---------------------------------------------------------------- checkpoints
def check_deepspeed_checkpoint(path: str, alternatives: str = '') -> None:
    """Fail, naming ``path``, unless it is a DeepSpeed checkpoint directory
    (DeepSpeed itself only warns and returns nothing); ``alternatives``
    ends the message with what else the caller would have taken."""
    if not osp.isdir(path) or not any(
            name.endswith('model_states.pt') for name in os.listdir(path)):
        raise FileNotFoundError(
            f'{path!r} is not a DeepSpeed checkpoint directory (one with '
            '*model_states.pt files, such as work_dir/iter_N.pth/ saved by '
            f'DeepSpeedZeroStrategy){alternatives}')


def deepspeed_checkpoint_to_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The trainable fp32 weights of a DeepSpeed ZeRO-2/3 checkpoint.

    Args:
        path: the checkpoint directory the strategy saved
            (``work_dir/iter_N.pth/``), or a work_dir, whose
            ``last_checkpoint`` file names the newest.

    Returns:
        A state dict with the keys of ``LlavaModel.state_dict()`` (tied
        weights under each name), on the CPU.  Runs without a process group
        and without the model.
    """
    from deepspeed.utils.zero_to_fp32 import \
        get_fp32_state_dict_from_zero_checkpoint
    path = osp.abspath(osp.expanduser(str(path)))
    pointer = osp.join(path, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            path = osp.abspath(f.read().strip())
    check_deepspeed_checkpoint(
        path, ' nor a work_dir with `last_checkpoint`.')
    checkpoint_dir, tag = osp.split(path.rstrip(osp.sep))
    with safe_zero_to_fp32():  # weights_only=True, allow-listed types
        state = get_fp32_state_dict_from_zero_checkpoint(
            checkpoint_dir, tag=tag, exclude_frozen_parameters=True)
    return dict(state)

