"""Checkpoints on a local disk: atomic publication, completeness, and the
newest complete checkpoint of a work_dir (``--resume auto``).

The protocol (:class:`~dsvlm.engine.hooks.SafeCheckpointHook` follows it):

1. the checkpoint (a file, or a directory of shards) is written under a
   temporary name in its final folder (``.tmp-iter_N.pth``) and fsynced;
2. a directory gets a manifest (:data:`MANIFEST`: every file and its size)
   once every rank has written its part;
3. it is renamed to its final name (``iter_N.pth``) and the folder fsynced;
4. ``last_checkpoint`` is replaced atomically (temporary + fsync + rename);
5. only then are old checkpoints removed (a directory is first renamed to
   ``.trash-iter_N.pth``, so a half-deleted one never keeps a valid name).

A kill at any moment leaves the previous checkpoint and a
``last_checkpoint`` naming a complete checkpoint; what it leaves besides
(``.tmp-*``, ``.trash-*``) is skipped by :func:`find_resume_checkpoint` and
removed by the next run.
"""
import json
import os
import os.path as osp
import re
import shutil
import zipfile
from typing import Callable, List, Optional, Tuple

TMP_PREFIX = '.tmp-'
TRASH_PREFIX = '.trash-'
MANIFEST = 'dsvlm_complete.json'
POINTER = 'last_checkpoint'
CHECKPOINT_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


# ------------------------------------------------------------ durability
def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of a folder (renames, new files) durable."""
    try:
        fd = os.open(path or '.', os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except OSError:  # a platform that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that does not fsync folders
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync a file, or every file and folder below a directory."""
    if not osp.isdir(path):
        fsync_file(path)
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_file(osp.join(folder, name))
        fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` at once: a reader sees the old or the
    new content, never a part; a failed write leaves the old file and no
    temporary."""
    tmp = osp.join(osp.dirname(path), TMP_PREFIX + osp.basename(path))
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    fsync_dir(osp.dirname(path))


def write_pointer(work_dir: str, checkpoint: str) -> None:
    """Point ``work_dir/last_checkpoint`` at ``checkpoint``, atomically."""
    atomic_write_text(osp.join(work_dir, POINTER), checkpoint)


def write_manifest(directory: str, **info) -> None:
    """List every file of a sharded checkpoint with its size (and ``info``)
    in :data:`MANIFEST`, the directory's mark of completeness."""
    files = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = osp.join(folder, name)
            files[osp.relpath(path, directory)] = osp.getsize(path)
    files.pop(MANIFEST, None)
    atomic_write_text(osp.join(directory, MANIFEST),
                      json.dumps(dict(info, files=files), indent=1))


def publish(tmp: str, final: str) -> None:
    """Rename a complete temporary checkpoint to its final name.

    A file replaces an older one at once (``os.replace``).  A directory
    cannot replace a directory: the older one is moved aside first (to
    ``.trash-*``) and removed after.
    """
    folder = osp.dirname(final)
    if osp.isdir(tmp) and osp.lexists(final):
        trash = osp.join(folder, TRASH_PREFIX + osp.basename(final))
        discard(trash)
        os.rename(final, trash)
        os.rename(tmp, final)
        fsync_dir(folder)
        discard(trash)
    else:
        os.replace(tmp, final)
    fsync_dir(folder)


def remove_checkpoint(path: str) -> None:
    """Remove a checkpoint; a directory is renamed to ``.trash-*`` first, so
    that an interrupted removal never leaves a partial directory under a
    checkpoint's name."""
    if osp.isdir(path) and not osp.islink(path):
        trash = osp.join(osp.dirname(path), TRASH_PREFIX + osp.basename(path))
        discard(trash)
        os.rename(path, trash)
        fsync_dir(osp.dirname(path))
        shutil.rmtree(trash)
    else:
        os.remove(path)
        fsync_dir(osp.dirname(path))


def remove_leftovers(folder: str) -> List[str]:
    """Remove what interrupted saves and removals left in ``folder``
    (``.tmp-*`` and ``.trash-*`` entries); returns their paths."""
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            path = osp.join(folder, name)
            discard(path)
            removed.append(path)
    return removed


def discard(path: str) -> None:
    """Remove a file or a directory tree if it is there, ignoring errors."""
    try:
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        elif osp.lexists(path):
            os.remove(path)
    except OSError:
        pass


# ------------------------------------------------------------ completeness
def incomplete_reason(path: str) -> Optional[str]:
    """None when ``path`` is a complete checkpoint, else why it is not.

    A file must be a torch zip archive whose directory (at its end) reads
    and that holds a ``data.pkl``.  A directory must hold its manifest with
    every listed file at its listed size, or, written before manifests, a
    DeepSpeed ``*model_states.pt`` with every ``*.pt`` a readable archive,
    or a torch.distributed.checkpoint ``.metadata`` (written last).
    """
    if osp.basename(path).startswith((TMP_PREFIX, TRASH_PREFIX)):
        return 'a temporary left by an interrupted save or removal'
    if not osp.exists(path):
        return 'it does not exist'
    if osp.isdir(path):
        return _incomplete_dir_reason(path)
    return _incomplete_file_reason(path)


def _incomplete_file_reason(path: str) -> Optional[str]:
    size = osp.getsize(path)
    if size == 0:
        return 'an empty file'
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        return (f'not a complete torch archive ({size} bytes, truncated or '
                f'corrupt: {error})')
    if not any(name.endswith('data.pkl') for name in names):
        return 'a zip archive without data.pkl (not a torch checkpoint)'
    return None


def _incomplete_dir_reason(path: str) -> Optional[str]:
    manifest = osp.join(path, MANIFEST)
    if osp.isfile(manifest):
        try:
            with open(manifest) as f:
                files = json.load(f)['files']
        except (OSError, ValueError, KeyError) as error:
            return f'an unreadable {MANIFEST} ({error})'
        for name, size in files.items():
            file = osp.join(path, name)
            if not osp.isfile(file):
                return f'{name}, listed in {MANIFEST}, is missing'
            if osp.getsize(file) != size:
                return (f'{name} has {osp.getsize(file)} bytes, {MANIFEST} '
                        f'says {size}')
        return None
    names = os.listdir(path)
    if '.metadata' in names:
        return None  # DCP writes its metadata after every shard
    if any(n.endswith('model_states.pt') for n in names):
        for name in names:
            if name.endswith('.pt'):
                reason = _incomplete_file_reason(osp.join(path, name))
                if reason:
                    return f'{name} is {reason}'
        return None
    return (f'a directory without {MANIFEST}, DeepSpeed *model_states.pt or '
            'DCP .metadata (an interrupted save)')


# ------------------------------------------------------------ --resume auto
def checkpoint_step(path: str) -> Optional[Tuple[str, int]]:
    """``('iter', 7)`` for ``.../iter_7.pth``; None for other names."""
    match = CHECKPOINT_NAME.match(osp.basename(path.rstrip(osp.sep)))
    return (match.group(1), int(match.group(2))) if match else None


def _read_pointer(work_dir: str) -> Optional[str]:
    pointer = osp.join(work_dir, POINTER)
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        target = f.read().strip()
    if target and not osp.exists(target):
        # written relative to another working directory, or the work_dir
        # moved: the same name in this work_dir
        moved = osp.join(work_dir, osp.basename(target.rstrip(osp.sep)))
        if osp.exists(moved):
            return moved
    return target or None


def find_resume_checkpoint(work_dir: str,
                           log: Optional[Callable[[str], None]] = None
                           ) -> Optional[str]:
    """The newest complete checkpoint of ``work_dir``, or None.

    Candidates are what ``last_checkpoint`` names and every
    ``iter_N.pth`` / ``epoch_N.pth`` (file or directory) in the work_dir
    and in the folder ``last_checkpoint`` points into.  Incomplete ones are
    skipped, each with its reason sent to ``log``; of the complete ones the
    highest step wins (``last_checkpoint``'s on a tie; its kind, iter or
    epoch, first).
    """
    log = log or (lambda message: None)
    target = _read_pointer(work_dir)
    folders = [work_dir] + ([osp.dirname(target)] if target else [])
    paths = []
    for folder in dict.fromkeys(osp.abspath(f) for f in folders):
        if osp.isdir(folder):
            paths += [osp.join(folder, n) for n in sorted(os.listdir(folder))
                      if CHECKPOINT_NAME.match(n.replace(TMP_PREFIX, '', 1))]
    if target and osp.abspath(target) not in map(osp.abspath, paths):
        paths.append(target)
    complete = []
    for path in paths:
        reason = incomplete_reason(path)
        if reason is None:
            complete.append(path)
        else:
            log(f'--resume: skipped {path}: {reason}')
    if target and target not in complete:
        log(f'--resume: {osp.join(work_dir, POINTER)} names {target}, '
            'which is not a complete checkpoint')
    if not complete:
        return None
    kind = (checkpoint_step(target) or ('iter', 0))[0] if target else 'iter'

    def rank(path):
        kind_step = checkpoint_step(path) or (kind, -1)
        same = target is not None and osp.abspath(path) == osp.abspath(target)
        return (kind_step[0] == kind, kind_step[1], same)

    return max(complete, key=rank)
