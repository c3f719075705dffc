"""Toy components for the engine tests, registered into the dsvlm registries.

Configs load this module through
``custom_imports=dict(imports=['toy_modules'])`` (``tests`` is on
``sys.path``), so it also exercises decorator
registration from a user's own module.

* ``ToyRegressionDataset``: ``num_samples`` fixed (input, target) pairs.
* ``ToyLinearModel``: one linear layer with fixed initial weights and an MSE
  loss; it records the dataset indices it trained on.
* ``DumpStateHook``: after the run, saves each rank's weights and seen indices
  to ``work_dir/state_rank{rank}.pth``.
* ``StopAfterIterHook``: ends the process right after iteration ``stop_after``
  (after the checkpoint of that iteration is written) to simulate a crash.
* ``RecordLossesHook``: after the run, writes each rank's per-iteration
  losses to ``work_dir/losses_rank{rank}.json``.
* ``ToyMSEMetric``: mean squared error; also written to ``out_file``.
* ``ToyStrategy``: a strategy registered in dsvlm only.
* ``ToyConnector``: a ``CONNECTORS`` component.
"""
import json
import os
import os.path as osp

import torch
import torch.nn.functional as F
from mmengine._strategy import SingleDeviceStrategy
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from torch import nn
from torch.utils.data import Dataset

from dsvlm.registry import (CONNECTORS, DATASETS, HOOKS, METRICS, MODELS,
                            STRATEGIES)

TOY_DIM = 4


def toy_samples(num_samples, dim=TOY_DIM):
    """The dataset's (inputs, targets), also used by tests as reference."""
    g = torch.Generator().manual_seed(1234)
    inputs = torch.randn(num_samples, dim, generator=g)
    true_w = torch.arange(1., dim + 1.)
    targets = inputs @ true_w[:, None] + 0.5
    return inputs, targets


def toy_initial_weights(dim=TOY_DIM):
    """The model's fixed initial (weight, bias), independent of any seed."""
    return torch.linspace(-0.5, 0.5, dim)[None, :], torch.tensor([0.1])


@DATASETS.register_module()
class ToyRegressionDataset(Dataset):

    def __init__(self, num_samples=16, dim=TOY_DIM, tokenizer=None,
                 template=None, max_length=None, image_processor=None):
        self.inputs, self.targets = toy_samples(num_samples, dim)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], targets=self.targets[index],
                    index=torch.tensor(index))


@MODELS.register_module()
class ToyLinearModel(BaseModel):

    def __init__(self, dim=TOY_DIM, data_preprocessor=None, init_cfg=None,
                 **unused_shared_keys):
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.linear = nn.Linear(dim, 1)
        weight, bias = toy_initial_weights(dim)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.seen_indices = []

    def forward(self, inputs, targets=None, index=None, mode='tensor'):
        preds = self.linear(inputs)
        if mode == 'loss':
            if self.training and index is not None:
                self.seen_indices.extend(index.tolist())
            return dict(loss=F.mse_loss(preds, targets))
        return preds


@HOOKS.register_module()
class DumpStateHook(Hook):
    priority = 'LOWEST'

    def after_run(self, runner):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        state = dict(
            weight=model.linear.weight.detach().clone(),
            bias=model.linear.bias.detach().clone(),
            seen_indices=list(model.seen_indices),
            world_size=int(os.environ.get('WORLD_SIZE', 1)),
            accumulative_counts=runner.optim_wrapper.__dict__.get(
                '_accumulative_counts'),
            deepspeed_config=json.loads(json.dumps(getattr(
                getattr(runner, 'strategy', None), 'config', None))))
        torch.save(state, osp.join(runner.work_dir,
                                   f'state_rank{get_rank()}.pth'))


@HOOKS.register_module()
class StopAfterIterHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook has saved this iteration

    def __init__(self, stop_after):
        self.stop_after = stop_after

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.stop_after:
            os._exit(3)  # a crash: no clean-up, no after_run


@HOOKS.register_module()
class RecordLossesHook(Hook):
    """Writes every iteration's loss of this rank to
    ``work_dir/losses_rank{rank}.json`` after the run."""
    priority = 'LOWEST'

    def before_run(self, runner):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss']))

    def after_run(self, runner):
        with open(osp.join(runner.work_dir,
                           f'losses_rank{get_rank()}.json'), 'w') as f:
            json.dump(self.losses, f)


@METRICS.register_module()
class ToyMSEMetric(BaseMetric):

    def __init__(self, out_file=None, **kwargs):
        super().__init__(**kwargs)
        self.out_file = out_file

    def process(self, data_batch, data_samples):
        preds = torch.stack(list(data_samples))  # one tensor per sample
        errors = (preds - data_batch['targets']).pow(2).flatten()
        self.results.extend(errors.tolist())

    def compute_metrics(self, results):
        mse = sum(results) / len(results)
        if self.out_file:
            torch.save(dict(mse=mse, count=len(results)), self.out_file)
        return dict(mse=mse)


@STRATEGIES.register_module()
class ToyStrategy(SingleDeviceStrategy):
    pass


@CONNECTORS.register_module()
class ToyConnector(nn.Module):

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.proj(x)


TOY_BASE_CONFIG = """
default_scope = 'dsvlm'
custom_imports = dict(imports=['toy_modules'], allow_failed_imports=False)
model = dict(type='ToyLinearModel')
global_batch_size = 4
train_dataloader = dict(
    batch_size=2, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ToyRegressionDataset', num_samples=16))
train_cfg = dict(by_epoch=True, max_epochs=1)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='DumpStateHook')]
env_cfg = dict(dist_cfg=dict(backend='nccl'))  # falls back to gloo on CPU
randomness = dict(seed=0, deterministic=True)
"""


def write_toy_config(folder, name='toy.py', extra=''):
    """Write ``toy_base.py`` and ``name`` (inheriting it + ``extra``)."""
    with open(osp.join(folder, 'toy_base.py'), 'w') as f:
        f.write(TOY_BASE_CONFIG)
    path = osp.join(folder, name)
    with open(path, 'w') as f:
        f.write("_base_ = ['./toy_base.py']\n" + extra)
    return path
