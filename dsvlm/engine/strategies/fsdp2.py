"""FSDP2 (torch's ``fully_shard``) as an MMEngine strategy, with checkpoints
in ``torch.distributed.checkpoint`` (DCP) directories.

MMEngine's ``FSDPStrategy`` wraps with FSDP1 and does not run on a CPU.
:class:`FSDP2Strategy` shards the model in place: every block named in a
transformers/diffusers model's ``_no_split_modules`` (``LlamaDecoderLayer``,
``CLIPEncoderLayer``, ...) that trains becomes one sharding unit, and the
root model takes the rest.  Parameters become ``DTensor`` s; the optimizer
is built afterwards over them, so its state is sharded too.

A checkpoint is a directory: one ``__<rank>_0.distcp`` shard per rank, DCP's
``.metadata``, and ``extra_state.pth`` (rank 0: meta, message hub, parameter
schedulers, optimizer-wrapper extras).  It loads on any number of
processes; :func:`fsdp2_checkpoint_to_state_dict` reads it without a
process group.
"""
import contextlib
import os
import os.path as osp
import re
import time
from typing import Callable, Optional, Union

import mmengine
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from mmengine._strategy import DDPStrategy
from mmengine.dist import is_main_process
from mmengine.utils import get_git_hash
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (FSDPModule, MixedPrecisionPolicy,
                                    fully_shard)
from torch.distributed.tensor import DTensor

from dsvlm.registry import STRATEGIES
from dsvlm.utils.safe_load import (CheckpointLoadError, load_checkpoint_file,
                                   read_dcp_metadata, safe_file_system_reader,
                                   safe_torch_load)

EXTRA_STATE_FILE = 'extra_state.pth'
MODEL_KEY, OPTIM_KEY = 'state_dict', 'optimizer'
_DTYPES = dict(bf16='bfloat16', fp16='float16', half='float16',
               fp32='float32', float='float32')


@STRATEGIES.register_module()
class FSDP2Strategy(DDPStrategy):
    """Fully sharded data parallel with torch's ``fully_shard`` (FSDP2).

    Use through MMEngine's ``FlexibleRunner`` (``runner_type =
    'FlexibleRunner'``; preset ``configs/_base_/strategies/fsdp.py``).
    Runs with NCCL on GPUs and with gloo on CPUs; with ``--launcher none``
    it makes a process group of one.

    Args:
        mixed_precision (dict, optional): :class:`MixedPrecisionPolicy`
            fields, dtypes as strings, e.g. ``dict(param_dtype='bfloat16',
            reduce_dtype='float32')``: parameters are all-gathered and
            computed in ``param_dtype``, gradients reduced in
            ``reduce_dtype``, the sharded master weights and optimizer stay
            fp32.  Frozen parameters that are not sharded are cast to
            ``param_dtype``.  None: everything in fp32.
        activation_checkpointing (bool): recompute each block's activations
            in backward (``gradient_checkpointing_enable`` of every
            transformers model, ``enable_gradient_checkpointing`` of every
            diffusers model).
        shard_frozen (bool): also shard frozen parameters.  By default they
            stay plain tensors replicated on every rank, outside FSDP (a
            frozen encoder, DS-VLM's UNet/VAE/VGG, the base weights under
            LoRA): no all-gathers for weights that never change.
        reshard_after_forward (bool): free each block's gathered parameters
            after its forward and gather them again in backward.  The root
            (whose forward is the whole step) keeps torch's choice, False.
        **kwargs: :class:`mmengine._strategy.DDPStrategy` arguments.

    Gradient accumulation reduce-scatters at every micro-step (sharded
    gradients accumulate; nothing unsharded is held between micro-steps).
    """

    def __init__(self,
                 *,
                 mixed_precision: Optional[dict] = None,
                 activation_checkpointing: bool = False,
                 shard_frozen: bool = False,
                 reshard_after_forward: bool = True,
                 **kwargs):
        self.mp_policy = build_mp_policy(mixed_precision)
        self.activation_checkpointing = activation_checkpointing
        self.shard_frozen = shard_frozen
        self.reshard_after_forward = reshard_after_forward
        super().__init__(**kwargs)

    # ------------------------------------------------------------ set-up
    def _setup_env(self, **kwargs):
        super()._setup_env(**kwargs)
        if not dist.is_initialized():  # --launcher none: a group of one
            backend = 'nccl' if torch.cuda.is_available() else 'gloo'
            dist.init_process_group(backend, store=dist.HashStore(), rank=0,
                                    world_size=1)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        """Shard ``model`` in place (blocks bottom-up, then the root);
        ``prepare`` builds the optimizer afterwards, over the DTensors."""
        if isinstance(model, FSDPModule):
            return model
        model = self.convert_model(model)
        device_type = 'cuda' if torch.cuda.is_available() else 'cpu'
        device = torch.device(device_type, torch.cuda.current_device()) \
            if device_type == 'cuda' else torch.device('cpu')
        ignored = set() if self.shard_frozen else {
            p for p in model.parameters() if not p.requires_grad}
        # fully_shard moves what it manages to the device one unit at a
        # time (no whole unsharded model on an accelerator); the frozen
        # weights it leaves alone move here, in the dtype FSDP computes in
        for param in ignored:
            param.data = param.data.to(
                device, self.mp_policy.param_dtype or param.dtype)
        if hasattr(model, '_set_device'):  # MMEngine's data preprocessor
            model._set_device(device)
        if self.activation_checkpointing:
            enable_activation_checkpointing(model)
        mesh = init_device_mesh(device_type, (dist.get_world_size(), ))
        kwargs = dict(mesh=mesh, mp_policy=self.mp_policy,
                      ignored_params=ignored or None)
        units = sharding_units(model, self.shard_frozen)
        for unit in reversed(units):  # bottom-up: nested units first
            fully_shard(unit, reshard_after_forward=self.reshard_after_forward,
                        **kwargs)
        fully_shard(model, **kwargs)
        self.logger.info(
            f'FSDP2: {len(units)} sharding units '
            f'({", ".join(sorted({type(u).__name__ for u in units}))}) + the '
            f'root over {mesh.size()} rank(s); {len(ignored)} frozen '
            'parameters replicated outside FSDP')
        return model

    def build_optim_wrapper(self, optim_wrapper, model=None):
        wrapper = super().build_optim_wrapper(optim_wrapper, model)
        for one in _wrappers(wrapper):
            if getattr(one, 'clip_func', None) is not None:
                one.clip_func = _full_norm(one.clip_func)
        return wrapper

    # ------------------------------------------------------------ saving
    def save_checkpoint(self,
                        filename: str,
                        *,
                        save_optimizer: bool = True,
                        save_param_scheduler: bool = True,
                        extra_ckpt: Optional[dict] = None,
                        callback: Optional[Callable] = None) -> None:
        """Write ``filename`` as a DCP directory: every rank writes its own
        shard of the trainable weights (and optimizer state); rank 0 adds
        the small rest in ``extra_state.pth``."""
        checkpoint = dict(extra_ckpt or {})
        checkpoint.setdefault('meta', {})
        checkpoint['meta'].update(
            seed=self.seed,
            time=time.strftime('%Y%m%d_%H%M%S', time.localtime()),
            mmengine=mmengine.__version__ + get_git_hash(),
            world_size=self.world_size)
        checkpoint[MODEL_KEY] = get_model_state_dict(self.model)
        if save_optimizer and hasattr(self, 'optim_wrapper'):
            optimizer = _single(self.optim_wrapper).optimizer
            checkpoint[OPTIM_KEY] = get_optimizer_state_dict(
                self.model, optimizer)
            checkpoint['optim_wrapper'] = _wrapper_extras(self.optim_wrapper)
        if save_param_scheduler and hasattr(self, 'param_schedulers'):
            checkpoint['param_schedulers'] = self.scheduler_state_dict()
        if callback is not None:
            callback(checkpoint)
        sharded = {k: checkpoint.pop(k) for k in (MODEL_KEY, OPTIM_KEY)
                   if k in checkpoint}
        if is_main_process():
            os.makedirs(filename, exist_ok=True)
            torch.save(checkpoint, osp.join(filename, EXTRA_STATE_FILE))
        dcp.save(sharded, checkpoint_id=filename)

    # ------------------------------------------------------------ loading
    def load_checkpoint(self,
                        filename: str,
                        *,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: list = [(r'^module.', '')],
                        callback: Optional[Callable] = None) -> dict:
        """Load the model weights of a DCP directory (any number of ranks
        wrote it) or of a plain MMEngine checkpoint file; returns the rest
        (``meta``, ``message_hub``, ...)."""
        self.logger.info(f'Load checkpoint from {filename}')
        if not is_fsdp2_checkpoint(filename):
            return self._load_plain_checkpoint(filename, strict, revise_keys,
                                               callback)
        extra = _read_extra(filename)
        if callback is not None:
            callback(extra)
        self._load_sharded(filename, optimizer=False, strict=strict)
        return extra

    def resume(self,
               filename: str,
               *,
               resume_optimizer: bool = True,
               resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default',
               callback: Optional[Callable] = None) -> dict:
        """Model, optimizer, schedulers and seed from a DCP directory, on
        any number of ranks (DCP reshards); returns the rest."""
        self.logger.info(f'Resume checkpoint from {filename}')
        if not is_fsdp2_checkpoint(filename):
            raise ValueError(
                'FSDP2Strategy resumes from the checkpoint directories it '
                f'writes (with a .metadata file), not {filename!r}; load the '
                'weights of a plain checkpoint with `load_from` instead')
        extra = _read_extra(filename)
        if callback is not None:
            callback(extra)
        resume_optimizer = resume_optimizer and hasattr(self, 'optim_wrapper')
        self._load_sharded(filename, optimizer=resume_optimizer, strict=True)
        if resume_optimizer:
            _load_wrapper_extras(self.optim_wrapper,
                                 extra.pop('optim_wrapper', {}))
        if resume_param_scheduler and hasattr(self, 'param_schedulers'):
            self.load_scheduler_state_dict(extra.pop('param_schedulers'))
        self._resume_seed(extra['meta'].get('seed'))
        accumulative_counts = getattr(getattr(self, 'optim_wrapper', None),
                                      '_accumulative_counts', 1)
        if accumulative_counts > 1:
            self.optim_wrapper.initialize_count_status(
                self.model, extra['meta']['iter'],
                self.dispatch_kwargs['max_iters'])
        return extra

    def _load_sharded(self, path: str, optimizer: bool, strict: bool):
        saved = _saved_paths(path)
        state = {MODEL_KEY: get_model_state_dict(self.model)}
        missing = sorted(k for k in state[MODEL_KEY]
                         if (MODEL_KEY, k) not in saved)
        if missing and strict:
            raise KeyError(f'{path} lacks {len(missing)} trainable weights '
                           f'of the model, e.g. {missing[:5]}')
        for key in missing:
            del state[MODEL_KEY][key]
        if optimizer and not any(p[0] == OPTIM_KEY for p in saved):
            self.logger.warning(f'{path} holds no optimizer state (saved '
                                'with save_optimizer=False): not resumed')
            optimizer = False
        if optimizer:
            optim = _single(self.optim_wrapper).optimizer
            state[OPTIM_KEY] = get_optimizer_state_dict(self.model, optim)
            # a parameter that never had a gradient (e.g. an encoder layer
            # after the one LLaVA reads) has no optimizer state: keep it so
            with_state = {p[2] for p in saved if p[:2] == (OPTIM_KEY, 'state')}
            state[OPTIM_KEY]['state'] = {
                k: v for k, v in state[OPTIM_KEY]['state'].items()
                if k in with_state}
        load_dcp(state, path)
        set_model_state_dict(self.model, state[MODEL_KEY],
                             options=StateDictOptions(strict=False))
        if optimizer:
            set_optimizer_state_dict(self.model, optim, state[OPTIM_KEY],
                                     options=StateDictOptions(strict=False))
        self.logger.info(
            f'Loaded {len(state[MODEL_KEY])} tensors from {path}' +
            (f'; not in it (kept as built): {missing}' if missing else ''))

    def _load_plain_checkpoint(self, filename, strict, revise_keys,
                               callback):
        """Every rank reads the whole file (safely) and keeps its shards."""
        checkpoint = load_checkpoint_file(filename, map_location='cpu')
        if callback is not None:
            callback(checkpoint)
        state = checkpoint.pop('state_dict', checkpoint)
        for pattern, replacement in revise_keys:
            state = {re.sub(pattern, replacement, k): v
                     for k, v in state.items()}
        result = set_model_state_dict(
            self.model, state,
            options=StateDictOptions(full_state_dict=True, strict=strict))
        self.logger.info(f'Loaded {len(state)} tensors from {filename}' + (
            f'; missing: {result.missing_keys}' if result.missing_keys else
            '') + (f'; unexpected: {result.unexpected_keys}'
                   if result.unexpected_keys else ''))
        return checkpoint

    def _resume_seed(self, resumed_seed):
        current_seed = self._randomness.get('seed')
        if resumed_seed is None or resumed_seed == current_seed:
            return
        if current_seed is not None:
            self.logger.warning(
                f'The random seed in the checkpoint ({resumed_seed}) differs '
                f'from `randomness.seed` ({current_seed}); using the '
                'checkpoint\'s')
        self._randomness.update(seed=resumed_seed)
        self._set_randomness(**self._randomness)


# ---------------------------------------------------------------- helpers
def build_mp_policy(mixed_precision: Optional[dict]) -> MixedPrecisionPolicy:
    """``dict(param_dtype='bfloat16', reduce_dtype='float32', ...)`` (or
    None: fp32) -> :class:`MixedPrecisionPolicy`."""
    if mixed_precision is None:
        return MixedPrecisionPolicy()
    fields = dict(mixed_precision)
    for key in ('param_dtype', 'reduce_dtype', 'output_dtype'):
        value = fields.get(key)
        if isinstance(value, str):
            name = _DTYPES.get(value, value)
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(
                    f'strategy.mixed_precision.{key}={value!r} is not a '
                    "torch dtype; use e.g. 'bfloat16', 'float16', 'float32'")
            fields[key] = getattr(torch, name)
    try:
        return MixedPrecisionPolicy(**fields)
    except TypeError as error:
        raise TypeError(f'strategy.mixed_precision={dict(mixed_precision)}: '
                        f'{error}') from None


def sharding_units(model: nn.Module, shard_frozen: bool = False) -> list:
    """The blocks that ``_no_split_modules`` of the transformers/diffusers
    models inside ``model`` name, in module order; only blocks with a
    trainable parameter unless ``shard_frozen``."""
    block_names = set()
    for module in model.modules():
        block_names.update(getattr(module, '_no_split_modules', None) or ())
    return [m for m in model.modules()
            if type(m).__name__ in block_names and m is not model and (
                shard_frozen or any(p.requires_grad for p in m.parameters()))]


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Non-reentrant activation checkpointing in every outermost
    transformers and diffusers model inside ``model`` (each block recomputes
    its forward in backward); returns how many models were switched."""
    done = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in done):
            continue  # inside a model already switched
        cls, kwargs = type(module), dict(use_reentrant=False)
        hf = getattr(module, 'supports_gradient_checkpointing', False)
        if hf and hasattr(cls, 'activation_checkpointing_enable'):
            module.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs)
        elif hf and hasattr(cls, 'gradient_checkpointing_enable'):
            module.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=kwargs)  # older transformers
        elif getattr(module, '_supports_gradient_checkpointing', False) and \
                hasattr(cls, 'enable_gradient_checkpointing'):  # diffusers
            module.enable_gradient_checkpointing()
        else:
            continue
        done.append(f'{name}.' if name else '')
    return len(done)


def _full_norm(clip_func):
    """``clip_grad_norm_`` returns a DTensor for DTensor gradients: give the
    logged norm as the full (all-reduced) plain tensor."""

    def clip(params, *args, **kwargs):
        norm = clip_func(params, *args, **kwargs)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    return clip


def _wrappers(optim_wrapper):
    return list(optim_wrapper.values()) if hasattr(
        optim_wrapper, 'optim_wrappers') else [optim_wrapper]


def _single(optim_wrapper):
    wrappers = _wrappers(optim_wrapper)
    if len(wrappers) != 1:
        raise NotImplementedError(
            'FSDP2Strategy checkpoints one optimizer, not an OptimWrapperDict')
    return wrappers[0]


def _wrapper_extras(optim_wrapper) -> dict:
    """What an optim wrapper saves besides its optimizer (AmpOptimWrapper's
    ``loss_scaler``, ``base_param_settings``)."""
    return {k: v for k, v in _single(optim_wrapper).state_dict().items()
            if k not in ('state', 'param_groups')}


def _load_wrapper_extras(optim_wrapper, extras: dict):
    wrapper = _single(optim_wrapper)
    if 'loss_scaler' in extras and hasattr(wrapper, 'loss_scaler'):
        wrapper.loss_scaler.load_state_dict(extras['loss_scaler'])
    if 'base_param_settings' in extras:
        wrapper.base_param_settings = extras['base_param_settings']


def is_fsdp2_checkpoint(path: str) -> bool:
    """Whether ``path`` is a DCP checkpoint directory."""
    return osp.isdir(path) and osp.isfile(osp.join(path, '.metadata'))


def _read_extra(path: str) -> dict:
    # written by save_checkpoint: MMEngine's message hub, numpy values ...
    # (weights_only=True with dsvlm.utils.safe_load's allow-list)
    return safe_torch_load(osp.join(path, EXTRA_STATE_FILE), 'cpu')


def load_dcp(state: dict, path: str) -> None:
    """``dcp.load`` whose ``.metadata`` is read without plain ``pickle``
    (:func:`dsvlm.utils.safe_load.read_dcp_metadata`); a shard that cannot
    be read is an error naming the checkpoint."""
    with _naming_errors(path):
        dcp.load(state, storage_reader=safe_file_system_reader(path))


@contextlib.contextmanager
def _naming_errors(path: str):
    read_dcp_metadata(path)  # refused here, not as one of DCP's retries
    try:
        yield
    except CheckpointLoadError:
        raise
    except (RuntimeError, ValueError, EOFError, KeyError,
            CheckpointException) as error:
        raise CheckpointLoadError(
            f'cannot load checkpoint {path}: a shard is truncated, missing '
            f'or does not match ({type(error).__name__}: '
            f'{str(error).strip()[:500]})') from None


def _saved_paths(path: str) -> set:
    """The nested keys of every entry in a DCP directory, e.g.
    ``('state_dict', 'llm.model.norm.weight')``."""
    metadata = read_dcp_metadata(path)
    planner_data = metadata.planner_data or {}
    return {tuple(planner_data.get(key, (key, )))
            for key in metadata.state_dict_metadata}


def fsdp2_checkpoint_to_state_dict(path: str) -> dict:
    """The model state dict of an FSDP2 checkpoint directory, read in this
    process alone (no process group needed; CPU tensors, no optimizer
    state): the trainable weights, keyed as ``LlavaModel.state_dict()``."""
    from torch.distributed.checkpoint.default_planner import \
        _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import \
        _load_state_dict
    if not is_fsdp2_checkpoint(path):
        raise FileNotFoundError(
            f'{path!r} is not an FSDP2 (torch.distributed.checkpoint) '
            'checkpoint directory: it has no .metadata file')
    state: dict = {}
    with _naming_errors(path):
        _load_state_dict(state, storage_reader=safe_file_system_reader(path),
                         planner=_EmptyStateDictLoadPlanner(keys={MODEL_KEY}),
                         no_dist=True)
    return dict(state.get(MODEL_KEY, {}))
