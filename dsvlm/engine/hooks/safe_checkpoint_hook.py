"""MMEngine's ``CheckpointHook``, made crash-safe."""
import difflib
import inspect
import os
import os.path as osp

import torch
from mmengine.dist import (all_gather_object, all_reduce, barrier,
                           get_world_size, is_main_process)
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook

from dsvlm.engine import checkpoint_files as files
from dsvlm.registry import HOOKS

ARGUMENTS = tuple(name for name in inspect.signature(
    CheckpointHook.__init__).parameters if name not in ('self', 'kwargs'))


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints survive a kill at any moment.

    MMEngine's hook removes the oldest checkpoint before it writes the new
    one, in place: a crash during a save (or a full disk) can leave no
    loadable checkpoint and a ``last_checkpoint`` naming a removed file.
    This hook follows the protocol of :mod:`dsvlm.engine.checkpoint_files`:
    the runner (any strategy: a plain file, a DeepSpeed or FSDP2 directory)
    writes ``.tmp-iter_N.pth``; every rank fsyncs what it sees and all
    agree that the write succeeded; rank 0 adds the manifest of a
    directory, renames it to ``iter_N.pth``, replaces ``last_checkpoint``
    atomically and only then removes old checkpoints, by name
    (``filename_tmpl`` in ``out_dir``): it keeps the newest
    ``max_keep_ckpts`` and never the checkpoint this run resumed from.  So
    ``max_keep_ckpts=1`` is safe.  A failed write (``OSError``, e.g. a full
    disk) removes the temporary and raises an error naming the checkpoint,
    leaving the previous one and ``last_checkpoint`` as they were.

    Takes the arguments of ``CheckpointHook``; an unknown one is an error
    when the hook is built (MMEngine's hook would pass it on to
    ``runner.save_checkpoint`` at the first save, possibly hours in).  On a
    non-local ``out_dir`` (``backend_args``, ``file_client_args``) it saves
    as ``CheckpointHook`` does, with a warning.
    """

    def __init__(self, *args, **kwargs):
        check_arguments(kwargs)
        super().__init__(*args, **kwargs)
        self._atomic = True
        self._resumed_from = None

    def before_train(self, runner) -> None:
        # MMEngine's hook removes checkpoints beyond `max_keep_ckpts` here,
        # before anything is saved; this one removes them after each save
        keep, self.max_keep_ckpts = self.max_keep_ckpts, -1
        try:
            super().before_train(runner)
        finally:
            self.max_keep_ckpts = keep
        self._atomic = (self.file_client_args is None
                        and isinstance(self.file_backend, LocalBackend))
        if not self._atomic:
            runner.logger.warning(
                f'SafeCheckpointHook: {self.out_dir} is not a local folder; '
                'checkpoints are saved in place, as CheckpointHook does')
            return
        self._resumed_from = resumed_checkpoint(runner)
        check_same_resume(self._resumed_from)
        if is_main_process():
            for folder in dict.fromkeys([self.out_dir, runner.work_dir]):
                for path in files.remove_leftovers(folder):
                    runner.logger.warning(
                        f'Removed {path}, left by an interrupted checkpoint '
                        'save or removal')
        barrier()

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        name = self.filename_tmpl.format(step)
        final = osp.join(self.out_dir, name)
        tmp = osp.join(self.out_dir, files.TMP_PREFIX + name)
        # what the checkpoint records about itself (as CheckpointHook does)
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)
        if self.max_keep_ckpts > 0:
            kept, _ = self._prune_plan(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           [s for s, _ in kept] + [step])

        error = None
        try:
            runner.save_checkpoint(
                self.out_dir, files.TMP_PREFIX + name, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args,
                **self.args)
            if osp.lexists(tmp):  # on this node
                files.fsync_tree(tmp)
        except Exception as caught:  # noqa: BLE001  (agreed on below)
            error = caught
        if not all_ranks_succeeded(error is None):
            if is_main_process():
                files.discard(tmp)
            raise save_error(final, tmp, runner.work_dir, error) from error

        error, published = None, False
        if is_main_process():
            try:
                if osp.isdir(tmp):
                    files.write_manifest(tmp, step=step,
                                         world_size=get_world_size())
                files.publish(tmp, final)
                published = True
                files.write_pointer(runner.work_dir, final)
            except Exception as caught:  # noqa: BLE001
                files.discard(tmp)
                error = caught
        if not all_ranks_succeeded(error is None):
            raise save_error(final, tmp, runner.work_dir, error,
                             published) from error
        if is_main_process():
            self._remove_old(runner, step)

    # ------------------------------------------------------------ pruning
    def _prune_plan(self, step):
        """``(kept, removed)``: this hook's checkpoints in ``out_dir`` older
        than ``step`` (``[(step, path)]``, by name) that stay beside the
        new one and those to remove.  The newest ``max_keep_ckpts - 1``
        stay, and the one this run resumed from."""
        prefix, _, suffix = self.filename_tmpl.partition('{}')
        older = []
        names = os.listdir(self.out_dir) if osp.isdir(self.out_dir) else []
        for name in names:
            middle = name[len(prefix):len(name) - len(suffix)]
            if (name.startswith(prefix) and name.endswith(suffix)
                    and middle.isdigit() and int(middle) < step):
                older.append((int(middle), osp.join(self.out_dir, name)))
        older.sort()
        cut = max(len(older) - (self.max_keep_ckpts - 1), 0)
        kept, removed = older[cut:], []
        for item in older[:cut]:
            resumed = osp.realpath(item[1]) == self._resumed_from
            (kept if resumed else removed).append(item)
        return sorted(kept), removed

    def _remove_old(self, runner, step):
        if self.max_keep_ckpts <= 0:
            return
        for _, path in self._prune_plan(step)[1]:
            try:
                files.remove_checkpoint(path)
            except OSError as error:  # the new checkpoint is safe anyway
                runner.logger.warning(f'Could not remove {path}: {error}')


def resumed_checkpoint(runner):
    """The real path of the checkpoint ``runner`` resumed from, or None."""
    resume = getattr(runner, '_resume', False)
    path = resume if isinstance(resume, str) else None
    if resume and path is None:
        path = (getattr(runner, '_load_from', None)
                or runner.message_hub.get_info('last_ckpt'))
    return osp.realpath(path) if path else None


def check_same_resume(path) -> None:
    """Fail when the ranks resumed from different checkpoints (each rank
    resolves ``--resume auto`` on its own: a run still writing to the
    work_dir, or a folder that differs between nodes, can split them)."""
    if get_world_size() == 1:
        return
    names = all_gather_object(osp.basename(path) if path else None)
    if len(set(names)) > 1:
        raise RuntimeError(
            f'The ranks resumed from different checkpoints: {names} (rank '
            'order). Is another run still writing to the work_dir, or does '
            'it differ between nodes?')


def all_ranks_succeeded(ok: bool) -> bool:
    """Whether every rank says ``ok`` (a barrier too)."""
    if get_world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0])
    all_reduce(flag, op='min')
    return bool(flag.item())


def save_error(final, tmp, work_dir, error, published=False) -> Exception:
    """The error of a failed save, saying what was kept."""
    pointer = osp.join(work_dir, files.POINTER)
    cause = (f'{type(error).__name__}: {error}' if error is not None else
             'another rank failed (see its log)')
    if published:
        message = (f'Saved checkpoint {final} but could not update '
                   f'{pointer}: {cause}. It still names the previous '
                   'checkpoint, which is kept; `--resume auto` finds the '
                   'new one.')
    else:
        message = (f'Could not save checkpoint {final} (written as {tmp}): '
                   f'{cause}. The previous checkpoint and {pointer} are '
                   'unchanged; the partial write was removed.')
    if isinstance(error, OSError):
        return OSError(error.errno, message)
    return RuntimeError(message)


def check_arguments(kwargs, owner='SafeCheckpointHook',
                    valid=ARGUMENTS) -> None:
    """Reject argument names ``owner`` does not take, with the closest
    valid one."""
    unknown = [k for k in kwargs if k not in valid]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hints.append(f'{name!r}' +
                     (f' (did you mean {close[0]!r}?)' if close else ''))
    raise TypeError(
        f'{owner} got unknown argument(s) {", ".join(hints)} '
        '(default_hooks.checkpoint in the config). Valid arguments: '
        f'{", ".join(valid)}')
