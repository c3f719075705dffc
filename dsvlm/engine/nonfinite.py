"""Non-finite steps: find them, skip them, stop a run that keeps making them.

An optimizer step is *non-finite* when the loss of one of its micro-batches,
on any rank, or its gradient norm is nan or inf.  :class:`NonFiniteGuard`
holds the policy the optimizer wrappers of ``optim_wrappers.py`` apply:

* every rank reaches the same verdict: the flags are all-reduced (one
  two-element collective per optimizer step);
* a non-finite step is never applied: its gradients are zeroed, it is
  logged with its iteration and the value that was not finite, and counted
  (``nonfinite_skips`` in the message hub: in the log lines and, as runtime
  information, in every checkpoint);
* ``nonfinite='stop'`` (the default) raises :class:`NonFiniteStepError`
  when ``max_consecutive_nonfinite`` steps in a row were non-finite (a
  diverged run), naming the last checkpoint of the work_dir;
  ``nonfinite='skip'`` skips for ever.
"""
import logging
import math
import os.path as osp
from typing import Iterable, Optional, Tuple

import torch
from mmengine import dist
from mmengine.logging import MessageHub, MMLogger, print_log

NONFINITE_POLICIES = ('stop', 'skip')
# A diverged run makes every step non-finite; an isolated bad batch or a
# bf16 spike makes one.  Five in a row tell the two apart within a few
# iterations of the divergence.
MAX_CONSECUTIVE_NONFINITE = 5


class NonFiniteStepError(RuntimeError):
    """Training stopped after too many non-finite steps in a row."""


def nonfinite_flag(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A bool tensor: whether any element of ``tensors`` is nan or inf.

    Reads the local part of sharded tensors (DTensor), so every rank checks
    its own shard; :meth:`NonFiniteGuard.agree` combines them.  The
    infinity norm (largest magnitude) cannot overflow, unlike the L2 one.
    """
    local = [t.to_local() if hasattr(t, 'to_local') else t for t in tensors]
    local = [t for t in local if t.numel()]
    if not local:
        return torch.tensor(False)
    norm = torch.nn.utils.get_total_norm(local, norm_type=math.inf)
    return ~torch.isfinite(norm)


def runner_work_dir(message_hub: MessageHub) -> Optional[str]:
    """The work_dir of the runner that owns ``message_hub``, or None.

    MMEngine's runners name their message hub and logger after the
    experiment and log to ``<work_dir>/<timestamp>/<timestamp>.log``.
    """
    name = message_hub.instance_name
    if not MMLogger.check_instance_created(name):
        return None
    log_file = MMLogger.get_instance(name).log_file
    if not log_file:
        return None
    log_dir = osp.dirname(osp.abspath(log_file))
    if not osp.basename(log_file).startswith(osp.basename(log_dir)):
        return None  # not the runner's layout
    return osp.dirname(log_dir)


def last_checkpoint_note(work_dir: Optional[str]) -> str:
    """Which checkpoint to resume from, as ``work_dir/last_checkpoint``
    names it (a sentence)."""
    if work_dir is None:
        return ('The work_dir is unknown, so no checkpoint can be named; '
                'look for `last_checkpoint` in it.')
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return (f'No checkpoint has been saved in {work_dir} (it has no '
                '`last_checkpoint` file).')
    with open(pointer) as f:
        path = f.read().strip()
    if not path or not osp.exists(path):
        return (f'{pointer} names {path!r}, which does not exist: no '
                'checkpoint to resume from.')
    return (f'The last good checkpoint is {path} (named by {pointer}); '
            'resume from it with `--resume` and a lower learning rate.')


class NonFiniteGuard:
    """The verdict and the bookkeeping for non-finite steps (see the module
    docstring); the optimizer wrappers detect and skip.

    Args:
        policy: ``'stop'`` or ``'skip'``.
        max_consecutive: under ``'stop'``, the number of non-finite steps
            in a row that stops the run (1: the first one).
        work_dir: where ``last_checkpoint`` is; defaults to the runner's.
        message_hub: where skips are counted; defaults to the current one.
    """

    def __init__(self,
                 policy: str = 'stop',
                 max_consecutive: int = MAX_CONSECUTIVE_NONFINITE,
                 work_dir: Optional[str] = None,
                 message_hub: Optional[MessageHub] = None):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(
                f'optim_wrapper.nonfinite={policy!r}: valid values are '
                f'{", ".join(map(repr, NONFINITE_POLICIES))}')
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(
                'optim_wrapper.max_consecutive_nonfinite must be an integer '
                f'>= 1, got {max_consecutive!r}')
        self.policy = policy
        self.max_consecutive = max_consecutive
        self.work_dir = work_dir
        self.message_hub = message_hub or MessageHub.get_current_instance()
        self.consecutive = 0
        self.steps = 0  # optimizer steps seen, for messages outside a runner

    @staticmethod
    def agree(loss_bad, grad_bad) -> Tuple[bool, bool]:
        """``(loss_bad, grad_bad)`` as every rank sees them: true on one
        rank is true on all (a no-op in a single process)."""
        loss_flag, grad_flag = (torch.as_tensor(flag).detach().reshape(-1)[:1]
                                .to(torch.float32)
                                for flag in (loss_bad, grad_bad))
        flags = torch.cat([loss_flag, grad_flag.to(loss_flag.device)])
        if dist.get_world_size() > 1:
            dist.all_reduce(flags, op='max')
        loss_bad, grad_bad = flags.tolist()
        return bool(loss_bad), bool(grad_bad)

    def where(self) -> str:
        it = self.message_hub.get_info('iter')
        return f'Iteration {it + 1}' if isinstance(it, int) else \
            f'Optimizer step {self.steps}'

    def check(self, loss_bad: bool, grad_bad: bool, grad_norm=None,
              overflow: bool = False) -> bool:
        """Record one optimizer step's agreed verdict; return whether it
        may be applied.  A non-finite step is logged and counted; under
        ``'stop'`` the ``max_consecutive``-th in a row raises
        :class:`NonFiniteStepError`.  ``overflow``: a loss-scale overflow
        (finite loss, the scaler backs off), skipped but not counted as a
        bad step."""
        self.steps += 1
        if not (loss_bad or grad_bad):
            self.consecutive = 0
            return True
        what = ' and '.join(
            name for name, bad in (('loss', loss_bad),
                                   ('gradient norm', grad_bad)) if bad)
        norm = '' if grad_norm is None else f' (grad_norm={grad_norm:g})'
        if overflow:
            print_log(f'{self.where()}: loss-scale overflow, non-finite '
                      f'{what}{norm}: the scaler skips the step and backs '
                      'off.', logger='current', level=logging.INFO)
            return False
        self.consecutive += 1
        total = (self.message_hub.get_info('nonfinite_skips') or 0) + 1
        self.message_hub.update_info('nonfinite_skips', total)
        self.message_hub.update_scalar('train/nonfinite_skips', total)
        if self.policy == 'stop' and self.consecutive >= self.max_consecutive:
            raise NonFiniteStepError(
                f'{self.where()}: non-finite {what}{norm} on '
                f'{self.consecutive} optimizer step(s) in a row '
                f'(optim_wrapper.max_consecutive_nonfinite='
                f'{self.max_consecutive}); the run has diverged. None of '
                'them was applied. ' +
                last_checkpoint_note(self.work_dir or runner_work_dir(
                    self.message_hub)))
        limit = (f'; the run stops at {self.max_consecutive}'
                 if self.policy == 'stop' else '')
        print_log(
            f'{self.where()}: non-finite {what}{norm}: optimizer step '
            f'skipped, gradients zeroed ({self.consecutive} in a row'
            f'{limit}; {total} skipped in all).', logger='current',
            level=logging.WARNING)
        return False
