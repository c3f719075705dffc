"""Pause a training run at a chosen moment of a checkpoint save, so that a
test can SIGKILL it exactly there.

Importing this module wraps the steps of :mod:`dsvlm.engine.checkpoint_files`
that ``SafeCheckpointHook`` calls.  They do nothing different unless
``DSVLM_FAULT_PAUSE=<moment>:<step>`` is set in the run's environment; then,
at that moment of saving checkpoint ``<step>``, the run writes the file
named by ``DSVLM_FAULT_MARK`` and sleeps (until it is killed).  Moments:

* ``partial``: the temporary is written and cut to half its size (what a
  kill in the middle of the write leaves), not yet renamed;
* ``written``: the temporary is complete and fsynced, not yet renamed;
* ``published``: renamed to ``iter_N.pth``, ``last_checkpoint`` not yet
  moved;
* ``pointed``: ``last_checkpoint`` moved, the old checkpoint not yet
  removed.
"""
import os
import os.path as osp
import time

from dsvlm.engine import checkpoint_files as files


def _pause_if(moment, path):
    wanted = os.environ.get('DSVLM_FAULT_PAUSE', '')
    step = files.checkpoint_step(
        osp.basename(path).replace(files.TMP_PREFIX, '', 1))
    if not wanted or step is None or wanted != f'{moment}:{step[1]}':
        return
    if moment == 'partial':
        _cut_in_half(path)
    with open(os.environ['DSVLM_FAULT_MARK'], 'w') as f:
        f.write(f'{moment} {path}\n')
    time.sleep(600)


def _cut_in_half(path):
    if osp.isdir(path):
        sizes = {osp.join(d, n): osp.getsize(osp.join(d, n))
                 for d, _, names in os.walk(path) for n in names}
        path = max(sizes, key=sizes.get)  # the largest shard
    with open(path, 'r+b') as f:
        f.truncate(osp.getsize(path) // 2)


def _wrap(name, moment, path_of):
    original = getattr(files, name)
    if getattr(original, '_fault_wrapped', False):
        return

    def wrapped(*args, **kwargs):
        _pause_if(moment, path_of(*args, **kwargs))
        return original(*args, **kwargs)

    wrapped._fault_wrapped = True
    setattr(files, name, wrapped)


# fsync_tree(tmp) runs right after the runner wrote the temporary
_wrap('fsync_tree', 'partial', lambda path: path)
_wrap('publish', 'written', lambda tmp, final: tmp)
_wrap('write_pointer', 'published', lambda work_dir, checkpoint: checkpoint)
_wrap('remove_checkpoint', 'pointed', lambda path: _newest_beside(path))


def _newest_beside(path):
    """The removal happens while saving the newest checkpoint of the folder:
    name that one."""
    folder = osp.dirname(path)
    steps = [files.checkpoint_step(n) for n in os.listdir(folder)]
    newest = max((s for s in steps if s), key=lambda s: s[1], default=None)
    return osp.join(folder, f'{newest[0]}_{newest[1]}.pth') if newest else path
