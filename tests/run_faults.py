"""Faults of a training run other than a kill in a save (those are in
checkpoint_faults.py), injected by environment variables; importing this
module changes nothing unless they are set in the run's environment.

* ``DSVLM_FAULT_DATA_PAUSE=<n>``: the ``n``-th sample this process reads
  (``LlavaDataset.__getitem__``, counted from 1) writes the file named by
  ``DSVLM_FAULT_MARK`` and sleeps, so that a test can SIGKILL the run while
  it loads data.
* ``DSVLM_FAULT_FULL_DISK=<step>``: writing checkpoint ``<step>`` fails as
  on a full disk (``ENOSPC``) once its temporary is half written.
* ``DSVLM_FAULT_NAN_ITER=<i>``: the loss of iteration ``<i>`` (0-based, as
  MMEngine's ``iter``) becomes nan before the backward.
"""
import errno
import os
import time

import torch
from mmengine.fileio.backends import LocalBackend
from mmengine.logging import MessageHub

from dsvlm.datasets.llava_dataset import LlavaDataset
from dsvlm.engine import optim_wrappers

_reads = [0]


def _pause(what):
    with open(os.environ['DSVLM_FAULT_MARK'], 'w') as f:
        f.write(f'{what}\n')
    time.sleep(600)


def _wrap(owner, name, make):
    original = getattr(owner, name)
    if getattr(original, '_fault_wrapped', False):
        return
    wrapped = make(original)
    wrapped._fault_wrapped = True
    setattr(owner, name, wrapped)


def _data_pause(original):
    def getitem(self, idx):
        wanted = os.environ.get('DSVLM_FAULT_DATA_PAUSE')
        _reads[0] += 1
        if wanted and _reads[0] == int(wanted):
            _pause(f'data {idx}')
        return original(self, idx)
    return getitem


def _full_disk(original):
    def put(self, obj, filepath):
        step = os.environ.get('DSVLM_FAULT_FULL_DISK')
        if step and os.path.basename(str(filepath)).endswith(
                f'iter_{step}.pth'):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, obj, filepath)
    return put


def _nan_loss(original):
    def backward(self, loss, **kwargs):
        wanted = os.environ.get('DSVLM_FAULT_NAN_ITER')
        if wanted and MessageHub.get_current_instance().get_info(
                'iter') == int(wanted):
            loss = loss * torch.tensor(float('nan'))
        return original(self, loss, **kwargs)
    return backward


_wrap(LlavaDataset, '__getitem__', _data_pause)
_wrap(LocalBackend, 'put', _full_disk)
_wrap(optim_wrappers._FiniteStepMixin, 'backward', _nan_loss)
