"""Build a directory once, atomically, and safely from several processes.

The directory is built in a temporary sibling and renamed into place, so a
reader sees either nothing or a complete directory.  A parameters file, written
last, records how it was built: a later call with the same parameters reuses
the directory, one with different parameters fails with an error naming it.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path


def normalise(params):
    """``params`` as they read back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(params, sort_keys=True))


def read_params(target, params_file, what):
    """The parameters ``target`` was built with, or None if it does not exist.

    Raises if ``target`` exists but is not a complete ``what``.
    """
    target = Path(target)
    if not target.exists():
        return None
    path = target / params_file
    if not path.is_file():
        if target.is_dir() and not any(target.iterdir()):
            return None  # an empty directory is replaced
        raise FileExistsError(
            f'{target} exists but is not a complete {what} (no {params_file}). '
            'Delete it, or choose another path.')
    try:
        with open(path) as f:
            return json.load(f)['params']
    except (OSError, ValueError, KeyError) as err:
        raise FileExistsError(
            f'{path} is unreadable ({err}); delete {target} to rebuild the '
            f'{what}.') from err


def check_params(target, found, wanted, what):
    """Raise if the existing ``target`` was built with other parameters."""
    wanted = normalise(wanted)
    if found == wanted:
        return
    keys = sorted(set(found) | set(wanted))
    diff = ', '.join(f'{k}: existing {found.get(k)!r} vs requested '
                     f'{wanted.get(k)!r}' for k in keys
                     if found.get(k) != wanted.get(k))
    raise ValueError(
        f'{target} already holds a {what} built with other parameters '
        f'({diff}). Delete it, or use another path for these parameters.')


def build_once(target, params, build, params_file, what):
    """Make ``target`` with ``build(tmp_dir)`` unless it already exists.

    Args:
        target: the directory to create.
        params: JSON-able parameters, compared with the ``params`` entry of
            ``target/params_file`` when ``target`` already exists.
        build: ``build(tmp_dir)`` writes the content into ``tmp_dir``, and
            ``params_file`` (a JSON object with a ``params`` entry) last.
        params_file: the name of the file that marks the directory complete.
        what: a few words naming the directory in errors.

    Returns:
        Path of ``target``.
    """
    target = Path(target)
    found = read_params(target, params_file, what)
    if found is not None:
        check_params(target, found, params, what)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.tmp-',
                                dir=target.parent))
    try:
        build(tmp)
        if not (tmp / params_file).is_file():
            raise RuntimeError(f'building the {what} wrote no {params_file}')
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
            # another process finished first: use (and check) its result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check_params(target, read_params(target, params_file, what), params,
                 what)
    return target
