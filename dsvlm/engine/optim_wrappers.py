"""Optimizer wrappers that never apply a non-finite step.

===================================  ===================================
type                                 extends (takes all its arguments)
===================================  ===================================
``FiniteStepOptimWrapper``           MMEngine's ``OptimWrapper``
``FiniteStepAmpOptimWrapper``        ``AmpOptimWrapper``
``FiniteStepDeepSpeedOptimWrapper``  ``DeepSpeedOptimWrapper`` (under
                                     DeepSpeed, ``strategy_config``
                                     turns either of the above into it)
===================================  ===================================

and, all three:

* ``nonfinite='stop'`` (default) or ``'skip'``, and
  ``max_consecutive_nonfinite=5``: see :mod:`dsvlm.engine.nonfinite`;
* ``work_dir``: where the error looks for ``last_checkpoint`` (defaults to
  the runner's);
* the plain and AMP ones: ``clip_grad=dict(max_norm=..., per_part=True)``
  clips each part of the model (vision encoder, connector, LLM,
  supervisors: the ``clip_part`` of the parameter groups, which
  ``TrainableOptimWrapperConstructor`` sets) to ``max_norm`` on its own,
  so that one part's large gradients (a diffusion branch trained from
  scratch) do not shrink the others' steps; ``grad_norm`` is then the norm
  of all gradients, and each part's is logged as ``grad_norm_<part>``.

At every optimizer step (once per ``accumulative_counts`` micro-batches)
the loss of each micro-batch and the gradient norm are checked on every
rank and the verdict is all-reduced.  The norm is the one ``clip_grad``
computes (and logs as ``grad_norm``); without clipping by norm, the
gradients' largest magnitude.  A non-finite step is skipped: no optimizer
update, gradients zeroed, under AMP the loss scale backs off.  A
loss-scale overflow of an enabled scaler (finite loss, scale above 1) is
the scaler's business: skipped and logged, not counted (a static loss
scale never backs off, so there it counts).

The plain and AMP wrappers also refuse to hand their state to a checkpoint
while a weight they train is not finite (``check_weights_on_save=True``:
one pass over the trainable weights per save), so that not even a finite
step that overflowed the weights (an absurd learning rate) is saved.

Under DeepSpeed the engine steps: its ZeRO-1/2/3 optimizers skip a step
whose gradient norm is not finite (DeepSpeed 0.19: always under ZeRO-3;
under ZeRO-1/2 unless ``bf16.check_grad_overflow=false`` or
``zero_optimization.compute_grad_norm=false``).  The wrapper turns a
non-finite loss into nan gradients so that DeepSpeed skips that step too,
reads ``engine.was_step_applied()`` and applies the same policy; a step
DeepSpeed applied despite a non-finite loss stops the run at once.
"""
import math

import torch
from mmengine._strategy.deepspeed import DeepSpeedOptimWrapper
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from dsvlm.registry import OPTIM_WRAPPERS
from .nonfinite import (MAX_CONSECUTIVE_NONFINITE, NonFiniteGuard,
                        NonFiniteStepError, last_checkpoint_note,
                        nonfinite_flag, runner_work_dir)


def _or(flag, bad):
    return bad if flag is None else flag | bad


class _FiniteStepMixin:
    """The guarded ``step`` of :class:`OptimWrapper` and its subclasses."""

    def __init__(self, *args, nonfinite: str = 'stop',
                 max_consecutive_nonfinite: int = MAX_CONSECUTIVE_NONFINITE,
                 work_dir=None, check_weights_on_save: bool = True,
                 **kwargs):
        clip = dict(kwargs.get('clip_grad') or {})
        per_part = bool(clip.pop('per_part', False))
        if kwargs.get('clip_grad') is not None:
            kwargs['clip_grad'] = clip
        super().__init__(*args, **kwargs)
        self.clip_parts = clip_parts(self.optimizer) if per_part else None
        self.guard = NonFiniteGuard(nonfinite, max_consecutive_nonfinite,
                                    work_dir, self.message_hub)
        self.check_weights_on_save = check_weights_on_save
        self._loss_bad = None  # over the micro-batches of this step

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self._loss_bad = _or(self._loss_bad, ~torch.isfinite(loss.detach()))
        super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        """Clip (as configured), check, then step or skip."""
        loss_bad = False if self._loss_bad is None else self._loss_bad
        self._loss_bad = None
        grad_bad, norm = self._check_gradients()
        loss_bad, grad_bad = self.guard.agree(loss_bad, grad_bad)
        norm = None if norm is None else float(norm)
        if self.guard.check(loss_bad, grad_bad, norm,
                            overflow=self._overflow(loss_bad, grad_bad)):
            if norm is not None:
                self.message_hub.update_scalar(f'train/{self.grad_name}',
                                               norm)
            self._apply_step(**kwargs)
        else:
            self._skip_step()

    def _trained_params(self):
        return [p for group in self.optimizer.param_groups
                for p in group['params'] if p.requires_grad]

    def _check_gradients(self):
        """``(non-finite flag, norm or None)``; clips as configured."""
        params = [p for p in self._trained_params() if p.grad is not None]
        if self.clip_grad_kwargs and self.grad_name == 'grad_norm':
            if not params:
                return torch.tensor(False), None
            if self.clip_parts is not None:
                norm = self._clip_each_part(params)
            else:
                norm = self.clip_func(params, **self.clip_grad_kwargs)
            return ~torch.isfinite(norm), norm
        bad = nonfinite_flag(p.grad for p in params)  # before clamping
        if self.clip_grad_kwargs and params:
            self.clip_func(params, **self.clip_grad_kwargs)
        return bad, None

    def _clip_each_part(self, params) -> torch.Tensor:
        """Clip each part's gradients to ``max_norm`` on its own; returns
        the norm of all of them (before clipping), and logs each part's as
        ``grad_norm_<part>``."""
        by_part = {}
        for param in params:
            by_part.setdefault(self.clip_parts[id(param)], []).append(param)
        norms = []
        for part, part_params in by_part.items():
            norm = self.clip_func(part_params, **self.clip_grad_kwargs)
            self.message_hub.update_scalar(f'train/grad_norm_{part}',
                                           float(norm))
            norms.append(norm)
        return torch.stack(norms).norm()

    def _overflow(self, loss_bad: bool, grad_bad: bool) -> bool:
        return False

    def _apply_step(self, **kwargs) -> None:
        self.optimizer.step(**kwargs)

    def _skip_step(self) -> None:
        self.zero_grad()

    def state_dict(self) -> dict:
        """The parent's, refused (:class:`NonFiniteStepError`) while a
        trained weight is not finite, so that no checkpoint holds one."""
        if self.check_weights_on_save and bool(
                nonfinite_flag(self._trained_params())):
            raise NonFiniteStepError(
                f'{self.guard.where()}: refusing to save a checkpoint: a '
                'trained weight is nan or inf (a step with a finite loss '
                'and gradient overflowed it: is the learning rate far too '
                'high?). ' + last_checkpoint_note(
                    self.guard.work_dir or runner_work_dir(self.message_hub)))
        return super().state_dict()


def clip_parts(optimizer) -> dict:
    """``{id(param): part}`` from the ``clip_part`` of each parameter group
    (set by ``TrainableOptimWrapperConstructor``)."""
    parts = {}
    for group in optimizer.param_groups:
        if 'clip_part' not in group:
            raise ValueError(
                "optim_wrapper.clip_grad.per_part needs parameter groups "
                "that name their part: set optim_wrapper.constructor="
                "'TrainableOptimWrapperConstructor'")
        parts.update((id(p), group['clip_part']) for p in group['params'])
    return parts


@OPTIM_WRAPPERS.register_module()
class FiniteStepOptimWrapper(_FiniteStepMixin, OptimWrapper):
    """``OptimWrapper`` that never applies a non-finite step (module
    docstring)."""


@OPTIM_WRAPPERS.register_module()
class FiniteStepAmpOptimWrapper(_FiniteStepMixin, AmpOptimWrapper):
    """``AmpOptimWrapper`` that never applies a non-finite step (module
    docstring).  The gradients are unscaled before the check."""

    def _check_gradients(self):
        if self.loss_scaler.is_enabled():
            self.loss_scaler.unscale_(self.optimizer)
        return super()._check_gradients()

    def _overflow(self, loss_bad: bool, grad_bad: bool) -> bool:
        """A dynamic scaler's overflow: it backs off and tries again."""
        return (grad_bad and not loss_bad and self.loss_scaler.is_enabled()
                and self._scale_update_param is None
                and self.loss_scaler.get_scale() > 1)

    def _apply_step(self, **kwargs) -> None:
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)

    def _skip_step(self) -> None:
        if self.loss_scaler.is_enabled():  # back off on the inf it found
            self.loss_scaler.update(self._scale_update_param)
        self.zero_grad()


@OPTIM_WRAPPERS.register_module()
class FiniteStepDeepSpeedOptimWrapper(DeepSpeedOptimWrapper):
    """``DeepSpeedOptimWrapper`` with the non-finite policy (module
    docstring).  DeepSpeed owns accumulation, clipping and skipping; this
    checks at each accumulation boundary."""

    def __init__(self, optimizer, nonfinite: str = 'stop',
                 max_consecutive_nonfinite: int = MAX_CONSECUTIVE_NONFINITE,
                 work_dir=None):
        super().__init__(optimizer)
        self.message_hub = MessageHub.get_current_instance()
        self.guard = NonFiniteGuard(nonfinite, max_consecutive_nonfinite,
                                    work_dir, self.message_hub)
        self._loss_bad = None

    def update_params(self, loss) -> None:  # type: ignore
        boundary = self.model.is_gradient_accumulation_boundary()
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = _or(self._loss_bad, bad)
        # nan gradients, which DeepSpeed's overflow check refuses to apply
        poison = torch.where(bad, math.nan, 1.0).to(loss.dtype)
        self.backward(loss * poison)
        self.step()
        if boundary:
            self._check_step()

    def _check_step(self) -> None:
        engine = self.model
        applied = engine.was_step_applied()
        loss_bad, grad_bad = self.guard.agree(self._loss_bad, not applied)
        self._loss_bad = None
        norm = engine.get_global_grad_norm()
        norm = None if norm is None else float(norm)
        if applied and loss_bad:
            raise NonFiniteStepError(
                f'{self.guard.where()}: DeepSpeed applied an optimizer step '
                'whose loss was not finite: its overflow check is off (ZeRO '
                'stage 0, bf16.check_grad_overflow=false or '
                'zero_optimization.compute_grad_norm=false in the '
                'strategy); the weights are no longer finite. ' +
                last_checkpoint_note(self.guard.work_dir or runner_work_dir(
                    self.message_hub)))
        if applied and norm is not None and math.isfinite(norm):
            self.message_hub.update_scalar('train/grad_norm', norm)
        scale = getattr(engine.optimizer, 'loss_scale', 1)
        overflow = (engine.fp16_enabled() and grad_bad and not loss_bad
                    and scale > 1)
        self.guard.check(loss_bad, grad_bad, norm, overflow=overflow)
