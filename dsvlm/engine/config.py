"""Config completion: one place states what model and data share.

A config sets ``tokenizer``, ``image_processor``, ``template``,
``max_length`` and ``num_image_tokens`` (the image features the LLM sees per
image, which the datasets count when they truncate) once at top level;
:func:`complete_config` copies them into every dataset of the
train/val/test dataloaders and into ``model`` wherever those leave them
unset.  It gives samplers that take a ``batch_size``
(``LengthGroupedSampler``) their dataloader's, fills the distributed
strategy's settings from what the config already states
(:mod:`dsvlm.engine.strategy_config`), points the training datasets that
skip bad samples at ``WORK_DIR/bad_samples.jsonl``, and turns the top-level
``global_batch_size`` into gradient accumulation for the current number of
processes.
"""
import copy
import inspect
import os
from pathlib import Path

from mmengine.config import Config

from .strategy_config import (apply_strategy, fill_strategy_settings,
                              strategy_kind)

SHARED_KEYS = ('tokenizer', 'image_processor', 'template', 'max_length',
               'num_image_tokens')
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

# Environment variables that hold the number of processes, per launcher.
_WORLD_SIZE_ENV = dict(pytorch='WORLD_SIZE', slurm='SLURM_NTASKS',
                       mpi='OMPI_COMM_WORLD_SIZE')


def load_config(path, cfg_options=None, launcher=None, strategy=None,
                complete=True):
    """``Config.fromfile`` + ``--cfg-options`` + the default ``work_dir``
    (:func:`default_work_dir`) + ``--strategy`` (a preset
    name, see :func:`~dsvlm.engine.strategy_config.apply_strategy`) +
    :func:`complete_config` (unless ``complete=False``: the caller completes
    after its own changes).  A top-level key that no code reads is an
    error or a warning (:func:`~dsvlm.engine.config_keys.check_config_keys`).
    """
    from .config_keys import check_config_keys  # it imports SHARED_KEYS
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    check_config_keys(cfg, cfg_options=cfg_options)
    if cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(path)
    if strategy is not None:
        apply_strategy(cfg, strategy)
    if not complete:
        return cfg
    return complete_config(cfg, world_size=world_size_from_env(launcher))


def default_work_dir(config_path) -> str:
    """``work_dirs/<path under configs/ without .py>`` (e.g.
    ``work_dirs/dsvlm/clip_vicuna7b`` for ``configs/dsvlm/clip_vicuna7b.py``),
    or ``work_dirs/<file name without .py>`` for a config outside a
    ``configs/`` folder."""
    parts = Path(os.path.abspath(config_path)).with_suffix('').parts
    if 'configs' in parts[:-1]:
        below = len(parts) - parts[::-1].index('configs')
        return os.path.join('work_dirs', *parts[below:])
    return os.path.join('work_dirs', parts[-1])


def world_size_from_env(launcher=None):
    """Number of processes the launcher will start (1 for ``'none'``).

    Without a launcher, ``WORLD_SIZE`` decides (as set by torchrun).
    """
    if launcher == 'none':
        return 1
    name = _WORLD_SIZE_ENV.get(launcher, 'WORLD_SIZE')
    return int(os.environ.get(name, 1))


def complete_config(cfg, world_size=None):
    """Fill shared keys and gradient accumulation into ``cfg`` (in place).

    Args:
        cfg (Config | dict): the whole config.
        world_size (int, optional): number of processes; defaults to the
            ``WORLD_SIZE`` environment variable, or 1.

    Returns:
        The same ``cfg``.
    """
    shared = {k: cfg[k] for k in SHARED_KEYS if cfg.get(k) is not None}
    targets = []
    for loader in DATALOADERS:
        if cfg.get(loader) and cfg[loader].get('dataset') is not None:
            targets += list(leaf_datasets(cfg[loader]['dataset']))
    if cfg.get('model') is not None:
        targets.append(cfg['model'])
    for target in targets:
        for key, value in shared.items():
            if target.get(key) is None:
                target[key] = copy.deepcopy(value)
    for loader in DATALOADERS:
        if cfg.get(loader):
            set_sampler_batch_size(cfg[loader], loader)
    set_bad_sample_records(cfg)
    fill_strategy_settings(cfg)
    if world_size is None:
        world_size = world_size_from_env()
    set_gradient_accumulation(cfg, world_size)
    return cfg


BAD_SAMPLE_RECORDS = 'bad_samples.jsonl'


def set_bad_sample_records(cfg) -> None:
    """Training datasets that skip bad samples list them in
    ``WORK_DIR/bad_samples.jsonl`` unless they name another file."""
    loader = cfg.get('train_dataloader')
    if not loader or loader.get('dataset') is None or not cfg.get('work_dir'):
        return
    for ds_cfg in leaf_datasets(loader['dataset']):
        policy = ds_cfg.get('bad_samples')
        if isinstance(policy, dict) and policy.get('policy') == 'skip' \
                and policy.get('record_file') is None:
            policy['record_file'] = os.path.join(cfg['work_dir'],
                                                 BAD_SAMPLE_RECORDS)


def _takes_batch_size(sampler_type) -> bool:
    if isinstance(sampler_type, str):
        from dsvlm.registry import DATA_SAMPLERS
        try:
            sampler_type = DATA_SAMPLERS.get(sampler_type)
        except KeyError:  # the builder reports unknown types
            return False
    if not callable(sampler_type):
        return False
    try:
        return 'batch_size' in inspect.signature(sampler_type).parameters
    except (TypeError, ValueError):
        return False


def set_sampler_batch_size(loader_cfg, name='dataloader'):
    """Give a sampler that groups samples into batches (it takes a
    ``batch_size``: MMEngine builds samplers from the dataset and seed only)
    the dataloader's ``batch_size``, so that the batch size is stated once.
    A sampler batch size that differs from the dataloader's is an error."""
    sampler = loader_cfg.get('sampler')
    batch = loader_cfg.get('batch_size')
    if not isinstance(sampler, dict) or not _takes_batch_size(
            sampler.get('type')):
        return
    if sampler.get('batch_size') is None:
        sampler['batch_size'] = batch
    elif sampler['batch_size'] != batch:
        raise ValueError(
            f'{name}.sampler.batch_size={sampler["batch_size"]} differs from '
            f'{name}.batch_size={batch}; leave the sampler\'s unset and it '
            'is taken from the dataloader.')


def leaf_datasets(dataset_cfg):
    """Yield the real dataset configs below dataset wrappers.

    ``ConcatDataset``-style wrappers hold ``datasets=[...]``, and
    ``RepeatDataset``-style ones hold ``dataset=dict(...)``.
    """
    if isinstance(dataset_cfg, (list, tuple)):
        for item in dataset_cfg:
            yield from leaf_datasets(item)
    elif isinstance(dataset_cfg.get('datasets'), (list, tuple)):
        yield from leaf_datasets(dataset_cfg['datasets'])
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def set_gradient_accumulation(cfg, world_size):
    """Keep ``global_batch_size`` whatever the number of processes.

    Sets ``optim_wrapper.accumulative_counts`` (or, under
    ``DeepSpeedStrategy``, ``strategy.gradient_accumulation_steps``) to
    ``global_batch_size // (train_dataloader.batch_size * world_size)``.
    Does nothing when ``global_batch_size`` is unset.
    """
    global_batch = cfg.get('global_batch_size')
    if global_batch is None:
        return None
    loader = cfg.get('train_dataloader') or {}
    batch = loader.get('batch_size')
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(
            f'global_batch_size={global_batch} needs an integer '
            f'train_dataloader.batch_size (per process), got {batch!r}.')
    per_step = batch * world_size
    if global_batch % per_step:
        raise ValueError(
            f'global_batch_size={global_batch} is not a multiple of '
            f'train_dataloader.batch_size={batch} x {world_size} '
            f'process(es) = {per_step}. Change global_batch_size, '
            'train_dataloader.batch_size or the number of processes.')
    counts = global_batch // per_step
    if strategy_kind(cfg) == 'deepspeed':
        cfg['strategy']['gradient_accumulation_steps'] = counts
    elif cfg.get('optim_wrapper') is not None:
        cfg['optim_wrapper']['accumulative_counts'] = counts
    return counts


def for_inference(cfg):
    """Drop the training-only parts of the model config (in place): the
    supervisors (DS-VLM's diffusion branch) and the stage-1 checkpoint that
    a trained checkpoint already contains.  Testing and export build the
    model this way, so they never build or load the diffusion branch."""
    model = cfg.get('model')
    for key, value in (('supervisors', []), ('pretrained_pth', None)):
        if model is not None and key in model:
            model[key] = value
    return cfg
