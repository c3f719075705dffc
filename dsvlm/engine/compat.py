"""Every patch dsvlm applies to MMEngine, in one place.

Checked against mmengine 0.11.0rc3, torch 2.13 and deepspeed 0.19.8.  Each
patch wraps one upstream function, says what breaks without it and when it
can go.  ``apply_mmengine_patches()`` applies them all, once; importing
``dsvlm.engine`` calls it, and so do the tools.

Safe loading (7-9): MMEngine's and DeepSpeed's loaders unpickle with
``weights_only=False``, so a crafted ``.pth`` runs code when loaded.  The
CheckpointLoader scheme registry (7) makes every MMEngine route (``load_from``,
``--resume``, ``load_checkpoint``, ``_load_checkpoint``) read local files with
``dsvlm.utils.safe_load`` (``weights_only=True`` plus an allow-list of the
training-state types) and refuse remote ones; (8) and (9) do the same for
DeepSpeed's readers, scoped to a call.  dsvlm's own readers
(``dsvlm.models.checkpoint``, the FSDP2 strategy) call ``safe_load``
directly.  ``tests/test_safe_loading.py`` checks each route with a crafted
pickle; ``tests/test_train_tool.py`` checks resume.

:func:`finish_distributed` and :func:`exit_distributed_process` are not
patches but belong here too: tools call them at the end of a run.
"""
import contextlib
import copy
import functools
import importlib.util
import os
import os.path as osp
import sys

import torch

_PATCHED_FLAG = '__dsvlm_patched__'
_applied = False


def apply_mmengine_patches():
    """Apply all patches below; calling it again does nothing."""
    global _applied
    if _applied:
        return
    patch_init_dist_for_cpu()
    patch_ddp_device_ids_for_cpu()
    patch_deepspeed_optimizer_registration()
    patch_flexible_runner_from_cfg()
    patch_unknown_type_errors()
    patch_epoch_restart_sleep()
    patch_safe_checkpoint_loader()
    _applied = True


def _mark(wrapper, original):
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _PATCHED_FLAG, True)
    return wrapper


def is_patched(func):
    return getattr(func, _PATCHED_FLAG, False)


# --- 1. init_dist on a CPU-only machine ------------------------------------
@contextlib.contextmanager
def _cuda_set_device_disabled():
    original = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = original


def _cpu_safe_init(original):

    def init(backend, *args, **kwargs):
        if torch.cuda.is_available():
            return original(backend, *args, **kwargs)
        if backend == 'nccl':
            backend = 'gloo'
        with _cuda_set_device_disabled():
            return original(backend, *args, **kwargs)

    return _mark(init, original)


def patch_init_dist_for_cpu():
    """Let the pytorch/slurm/mpi launchers start on a machine without CUDA.

    Breaks upstream: ``mmengine.dist.utils._init_dist_{pytorch,slurm,mpi}``
    call ``torch.cuda.set_device(local_rank)`` unconditionally (a CPU build
    of torch raises ``AttributeError: ... _cuda_setDevice``), and configs ask
    for ``backend='nccl'``, which needs CUDA.  Patch: when CUDA is
    unavailable, ``nccl`` becomes ``gloo`` and ``set_device`` is a no-op for
    the duration of the call.  Remove when mmengine skips ``set_device``
    without CUDA.
    """
    from mmengine.dist import utils as dist_utils
    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        original = getattr(dist_utils, name)
        if not is_patched(original):
            setattr(dist_utils, name, _cpu_safe_init(original))


# --- 2. DDP wrapping of a CPU model ----------------------------------------
def patch_ddp_device_ids_for_cpu():
    """Drop ``device_ids`` when DDP wraps a model that lives on the CPU.

    Breaks upstream: ``Runner.wrap_model`` and ``DDPStrategy._wrap_model``
    build ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``; torch's DDP
    rejects ``device_ids`` for CPU modules (``ValueError:
    DistributedDataParallel device_ids and output_device arguments only work
    with single-device/multiple-device GPU modules or CPU modules, but got
    device_ids [0] ...``).
    Patch: ``MMDistributedDataParallel.__init__`` sets ``device_ids=None``
    when no parameter is on an accelerator.  Remove when mmengine passes
    ``device_ids`` only for accelerator devices.
    """
    from mmengine.model.wrappers import MMDistributedDataParallel
    original = MMDistributedDataParallel.__init__
    if is_patched(original):
        return

    def __init__(self, module, *args, **kwargs):
        if kwargs.get('device_ids') is not None and all(
                p.device.type == 'cpu' for p in module.parameters()):
            kwargs['device_ids'] = None
        original(self, module, *args, **kwargs)

    MMDistributedDataParallel.__init__ = _mark(__init__, original)


# --- 3. DeepSpeed's removed 1-bit optimizers -------------------------------
def _register_deepspeed_optimizers():
    """``register_deepspeed_optimizers`` without the removed 1-bit ones."""
    from mmengine.registry import OPTIMIZERS
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.lamb import FusedLamb
    optimizers = [DeepSpeedCPUAdam, FusedAdam, FusedLamb]
    try:  # removed in deepspeed 0.19.7
        from deepspeed.runtime.fp16.onebit import (OnebitAdam, OnebitLamb,
                                                   ZeroOneAdam)
        optimizers += [OnebitAdam, OnebitLamb, ZeroOneAdam]
    except ImportError:
        pass
    names = []
    for optimizer in optimizers:
        if OPTIMIZERS.get(optimizer.__name__) is None:
            OPTIMIZERS.register_module(module=optimizer)
        names.append(optimizer.__name__)
    return names


def patch_deepspeed_optimizer_registration():
    """Let ``DeepSpeedStrategy()`` be built with deepspeed >= 0.19.7.

    Breaks upstream: ``DeepSpeedStrategy.__init__`` calls
    ``register_deepspeed_optimizers()``, which imports
    ``deepspeed.runtime.fp16.onebit`` (``ModuleNotFoundError`` since the 1-bit
    optimizers were removed) and re-registers the optimizers on every call
    (``KeyError: ... already registered`` for a second strategy).  Patch:
    replace it with a version that skips missing 1-bit optimizers and
    registers each optimizer once.  Applied only when deepspeed is
    installed.  Remove when mmengine guards that import.
    """
    if importlib.util.find_spec('deepspeed') is None:
        return
    from mmengine._strategy import deepspeed as ds_strategy
    original = ds_strategy.register_deepspeed_optimizers
    if not is_patched(original):
        ds_strategy.register_deepspeed_optimizers = _mark(
            _register_deepspeed_optimizers, original)


# --- 4. FlexibleRunner.from_cfg --------------------------------------------
def patch_flexible_runner_from_cfg():
    """Give ``FlexibleRunner.from_cfg`` the defaults ``Runner.from_cfg`` has.

    Breaks upstream: (a) ``from_cfg`` passes ``env_cfg=cfg.get('env_cfg')``,
    i.e. ``None`` for a config without ``env_cfg``, and ``build_strategy``
    then fails on ``**None`` (``TypeError``); (b) the strategy is built in
    ``__init__`` before the runner sets ``default_scope``, so a strategy
    registered in dsvlm's registry is not found (``KeyError``).  Patch:
    default ``env_cfg`` to ``dict(dist_cfg=dict(backend='nccl'))`` (the
    ``__init__`` default) and enter the config's ``default_scope`` first.
    Remove when mmengine fixes both.
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import FlexibleRunner
    original = FlexibleRunner.from_cfg.__func__
    if is_patched(original):
        return

    def from_cfg(cls, cfg):
        if cfg.get('env_cfg') is None:
            cfg = copy.deepcopy(cfg)
            cfg['env_cfg'] = dict(dist_cfg=dict(backend='nccl'))
        if cfg.get('default_scope') is not None:
            init_default_scope(cfg['default_scope'])
        return original(cls, cfg)

    FlexibleRunner.from_cfg = classmethod(_mark(from_cfg, original))



# --- 5. unknown types through MMEngine's root registries -------------------
def patch_unknown_type_errors():
    """List the registered names when the Runner meets an unknown ``type``.

    Breaks upstream (usability): the Runner builds through MMEngine's root
    registries (``mmengine.registry.MODELS`` ...), which switch to the dsvlm
    child by ``default_scope``; an unknown type then raises ``KeyError: X is
    not in the dsvlm::model registry. Please check ...`` without saying what
    is registered.  dsvlm's own registries already list the names
    (``dsvlm.registry._with_choices``); this patch wraps the ``build_func``
    of each MMEngine registry that has a dsvlm child the same way.  Remove if
    MMEngine lists the registered names itself.
    """
    from mmengine.registry import Registry

    from dsvlm import registry as dsvlm_registry
    for child in vars(dsvlm_registry).values():
        parent = getattr(child, 'parent', None)
        if not isinstance(child, Registry) or parent is None:
            continue
        if not getattr(parent.build_func, 'lists_registered_names', False):
            parent.build_func = dsvlm_registry._with_choices(
                parent.build_func)


# --- 6. the sleep at every epoch restart of an iteration-based loop --------
class _TimeWithoutSleep:
    """The ``time`` module, except that ``sleep`` returns at once."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    @staticmethod
    def sleep(seconds):
        return None


def patch_epoch_restart_sleep():
    """Skip the 2 s sleep when an iteration-based loop restarts a dataloader
    that has no worker processes.

    Breaks upstream (speed): ``_InfiniteDataloaderIterator.__next__`` (used
    by ``IterBasedTrainLoop``) calls ``time.sleep(2)`` at every epoch end
    "to prevent possible deadlock during epoch transition", a hazard of
    worker processes.  A small dataset run for many epochs loses minutes
    (the tiny world: 24 epochs, 48 s of a 5-minute run).  Patch: with
    ``num_workers == 0`` the restart does not sleep; with workers it still
    does.  An infinite sampler (``LengthGroupedSampler(infinite=True)``,
    ``InfiniteSampler``) never restarts at all.  Remove when MMEngine drops
    the sleep.
    """
    from mmengine.runner import loops
    iterator_cls = loops._InfiniteDataloaderIterator
    original = iterator_cls.__next__
    if is_patched(original):
        return

    def __next__(self):
        if getattr(self._dataloader, 'num_workers', 0) > 0:
            return original(self)
        real_time = loops.time
        loops.time = _TimeWithoutSleep(real_time)
        try:
            return original(self)
        finally:
            loops.time = real_time

    iterator_cls.__next__ = _mark(__next__, original)


# --- 7. MMEngine's checkpoint loader unpickles anything -------------------
def _safe_local_loader(original):

    def load_from_local_safely(filename, map_location=None):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        from dsvlm.utils.safe_load import load_checkpoint_file
        return load_checkpoint_file(filename, map_location)

    wrapper = _mark(load_from_local_safely, original)
    wrapper.__name__ = 'load_from_local_safely'  # logged as its backend
    return wrapper


def _refusing_remote_loader(original, prefix):

    def load_from_remote_refused(filename, map_location=None, *args,
                                 **kwargs):
        raise ValueError(
            f'{filename!r}: dsvlm loads checkpoints from local files only '
            f'(MMEngine\'s {prefix!r} loader unpickles with '
            'weights_only=False, which lets a crafted file run code); '
            'download it and pass the local path')

    wrapper = _mark(load_from_remote_refused, original)
    wrapper.__name__ = 'load_from_remote_refused'
    return wrapper


def patch_safe_checkpoint_loader():
    """Read checkpoints through MMEngine without running code from them.

    Breaks upstream (security): ``CheckpointLoader``'s local loader
    (``load_from_local``, used by ``load_from``, ``resume``,
    ``load_checkpoint``, ``_load_checkpoint``, the strategies) and its
    pavi/s3/open-mmlab loaders call ``torch.load(weights_only=False)``; the
    http/torchvision/mmcls ones ``torch.hub.load_state_dict_from_url``,
    whose ``weights_only`` defaults to False.  Unpickling a crafted ``.pth``
    then runs arbitrary code.  Patch, through the scheme registry
    (``CheckpointLoader.register_scheme(..., force=True)``, no function
    replaced): local paths are read by
    ``dsvlm.utils.safe_load.load_checkpoint_file`` (``weights_only=True``
    with an explicit allow-list of training-state types, or safetensors;
    errors name the file); every other registered scheme refuses, since
    dsvlm never downloads weights.  Remove when MMEngine loads with
    ``weights_only=True`` and an allow-list of its own.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if is_patched(loader):
            continue
        safe = _safe_local_loader(loader) if prefix == '' else \
            _refusing_remote_loader(loader, prefix)
        CheckpointLoader.register_scheme(prefix, safe, force=True)


# --- 8. DeepSpeed's zero_to_fp32 unpickles anything ------------------------
class _TorchWithSafeLoad:
    """The ``torch`` module, except that ``load`` is ``safe_torch_load``."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    @staticmethod
    def load(f, map_location=None, *args, mmap=None, **kwargs):
        from dsvlm.utils.safe_load import safe_torch_load
        return safe_torch_load(f, map_location, mmap=mmap)


@contextlib.contextmanager
def safe_zero_to_fp32():
    """Within the block, DeepSpeed's ``zero_to_fp32`` reads checkpoint files
    with ``safe_torch_load``.

    Breaks upstream (security): ``deepspeed.utils.zero_to_fp32``
    (``parse_model_states``, ``parse_optim_states``, used by
    ``get_fp32_state_dict_from_zero_checkpoint``) calls
    ``torch.load(weights_only=False)``.  Patch, for the duration of a call
    (``deepspeed_checkpoint_to_state_dict`` enters it): the module's
    ``torch`` global is a proxy whose ``load`` is the safe one.  Remove when
    DeepSpeed loads with ``weights_only=True``.
    """
    from deepspeed.utils import zero_to_fp32
    real = zero_to_fp32.torch
    if isinstance(real, _TorchWithSafeLoad):  # nested
        yield
        return
    zero_to_fp32.torch = _TorchWithSafeLoad(real)
    try:
        yield
    finally:
        zero_to_fp32.torch = real


# --- 9. the DeepSpeed engine's checkpoint engine unpickles anything --------
@contextlib.contextmanager
def safe_deepspeed_checkpoint_engine(engine):
    """Within the block, ``engine.load_checkpoint`` reads files with
    ``safe_torch_load``.

    Breaks upstream (security): ``DeepSpeedEngine.load_checkpoint`` reads
    ``*model_states.pt`` and ``*optim_states.pt`` through its checkpoint
    engine, whose ``TorchCheckpointEngine.load`` calls
    ``torch.load(weights_only=False)``.  Patch, on this engine's checkpoint
    engine only and for the duration of a load
    (``DeepSpeedZeroStrategy.load_checkpoint`` / ``resume`` enter it): its
    ``load`` is the safe one.  Remove when DeepSpeed loads with
    ``weights_only=True``.
    """
    from dsvlm.utils.safe_load import safe_torch_load
    checkpoint_engine = engine.checkpoint_engine
    own = checkpoint_engine.__dict__.get('load')

    def load(path, map_location=None):
        return safe_torch_load(path, map_location)

    checkpoint_engine.load = _mark(load, type(checkpoint_engine).load)
    try:
        yield
    finally:
        if own is None:
            del checkpoint_engine.load
        else:
            checkpoint_engine.load = own


# --- not a patch: clean shutdown of the process group ----------------------
def finish_distributed():
    """Destroy the default process group after a barrier, if there is one.

    Breaks otherwise: with torch 2.13 and gloo, a rank that exits while the
    process group is alive can abort (``terminate called without an active
    exception``, SIGABRT), so torchrun reports a failed run after training
    finished.  MMEngine's runners never destroy the group; the tools call
    this after ``runner.train()``/``runner.test()``.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_distributed_process(status: int = 0):
    """End a process that a launcher started (``WORLD_SIZE`` > 1) without
    the interpreter's teardown, after flushing its output.

    Breaks otherwise: with torch 2.13 and gloo, even after
    :func:`finish_distributed` a rank sometimes aborts in the C++ static
    destructors at interpreter exit (``terminate called without an active
    exception``, SIGABRT; about one 2-process run in three once every step
    and save ran a collective), and torchrun reports a failed run after
    training finished.  The tools call this last, from ``__main__`` only.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return
    import logging
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
