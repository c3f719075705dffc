"""Reading checkpoint files without running code from them.

A ``.pth`` is a pickle, and unpickling may call any function the file
names: a crafted checkpoint runs code when ``torch.load(weights_only=False)``
reads it.  Every checkpoint dsvlm reads goes through this module instead:

* :func:`load_checkpoint_file` reads a ``.pth`` with ``torch.load(...,
  weights_only=True)`` (torch's restricted unpickler: tensors, containers
  and numbers, plus an explicit allow-list of data types), or a
  ``.safetensors`` file with safetensors;
* :func:`allowed_globals` is that allow-list: what MMEngine, DeepSpeed and
  numpy put into the training state of a checkpoint (the message hub's
  ``HistoryBuffer``, numpy arrays and scalars of numeric dtypes,
  ``ConfigDict``, DeepSpeed's loss scaler, ZeRO stage and fragment
  addresses).  Classes only (no function but the two that rebuild numpy
  arrays and scalars), and ``getattr`` limited to ``HistoryBuffer``'s four
  statistics methods, which a pickled ``HistoryBuffer`` refers to;
* :func:`read_dcp_metadata` and :func:`safe_file_system_reader` (a
  ``FileSystemReader`` for ``dcp.load``) read a ``torch.distributed.
  checkpoint`` directory, whose ``.metadata`` DCP unpickles with plain
  :mod:`pickle`, with an unpickler that builds DCP's metadata classes only
  and shard paths inside the directory.

A file that asks for anything else raises :class:`UnsafeCheckpointError`; a
truncated, empty or malformed one :class:`CheckpointLoadError`.  Both name
the file.  ``dsvlm.engine.compat`` routes MMEngine's and DeepSpeed's
loaders here.
"""
import functools
import io
import os
import os.path as osp
import pickle
import sys
from typing import Any, Callable, List, Optional, Union

import torch

# HistoryBuffer.__getstate__ pickles its statistics methods, as
# ``getattr(HistoryBuffer, 'min')`` ...
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
_NUMERIC_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8',
                   'uint16', 'uint32', 'uint64', 'float16', 'float32',
                   'float64', 'longdouble', 'complex64', 'complex128')


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, empty, not a
    checkpoint); the message names the file."""


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint whose pickle asks for a global outside the
    allow-list (it would run code if unpickled unrestricted)."""


def _history_buffer_method(owner, name):
    """``getattr`` as the unpickler may call it: only
    ``getattr(HistoryBuffer, <statistics method>)``."""
    from mmengine.logging import HistoryBuffer
    if owner is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed: only '
        f'HistoryBuffer.{{{",".join(HISTORY_BUFFER_METHODS)}}}')


def _numpy_globals() -> List[Any]:
    import numpy as np
    core = np._core if hasattr(np, '_core') else np.core
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    allowed = [np.ndarray, np.dtype, reconstruct, scalar]
    # a checkpoint written under numpy 1 names numpy.core, numpy 2 numpy._core
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed += [(reconstruct, f'{module}._reconstruct'),
                    (scalar, f'{module}.scalar')]
    # an unpickled dtype is built (BUILD) as its class: numeric ones only
    # (no object dtype: object arrays stay refused)
    allowed += [type(np.dtype(name)) for name in _NUMERIC_DTYPES]
    return allowed


def _deepspeed_globals() -> List[Any]:
    """The types DeepSpeed 0.19 pickles into ``*_optim_states.pt``; only
    when DeepSpeed is already imported (its checkpoints are read by its
    own code, which imports it)."""
    if 'deepspeed' not in sys.modules:
        return []
    allowed = []
    for module, names in (
            ('deepspeed.runtime.fp16.loss_scaler',
             ('LossScaler', 'DynamicLossScaler')),
            ('deepspeed.runtime.zero.config', ('ZeroStageEnum', )),
            ('deepspeed.utils.tensor_fragment', ('fragment_address', ))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        allowed += [getattr(imported, n) for n in names
                    if hasattr(imported, n)]
    return allowed


def allowed_globals() -> List[Any]:
    """What a checkpoint's pickle may name besides tensors, containers and
    numbers (torch's own weights_only allow-list)."""
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_method, 'builtins.getattr'),
            ConfigDict, *_numpy_globals(), *_deepspeed_globals()]


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, 'name', None) or repr(source)


def _refused_global(error: Exception) -> str:
    """What torch's weights_only unpickler refused, from its message
    (``Unsupported global: GLOBAL builtins.exec was not an allowed global
    by default``, ``Unsupported operand 149`` ...)."""
    text = str(error)
    marker = 'WeightsUnpickler error:'
    text = text.split(marker, 1)[1] if marker in text else \
        text.split('trusted source.', 1)[-1]
    for line in text.splitlines():
        line = line.split('. Please use')[0].strip()
        if line and not line.startswith(('Check the documentation',
                                         'Please file an issue')):
            return line
    return type(error).__name__


def _unreadable(name: str, error: BaseException) -> CheckpointLoadError:
    detail = str(error).strip().splitlines()
    detail = detail[0] if detail else ''
    return CheckpointLoadError(
        f'cannot read checkpoint {name}: it is truncated, empty or not a '
        f'checkpoint ({type(error).__name__}'
        f'{": " + detail if detail else ""})')


def safe_torch_load(source: Union[str, os.PathLike, io.IOBase],
                    map_location: Union[None, str, Callable,
                                        torch.device] = 'cpu',
                    *,
                    mmap: Optional[bool] = None,
                    name: Optional[str] = None) -> Any:
    """``torch.load(source, weights_only=True)`` with the training-state
    allow-list, and errors that name the file."""
    name = name or _describe(source)
    if isinstance(source, (str, os.PathLike)) and not osp.isfile(source):
        raise FileNotFoundError(f'no checkpoint file at {name!r}')
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(source, map_location=map_location,
                              weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        text = str(error)  # 'Unsupported operand': not what torch writes
        if 'Weights only load failed' not in text or \
                'Unsupported operand' in text:
            raise _unreadable(name, error) from None
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {name}: its pickle holds something '
            f'that is neither a tensor nor an allowed type '
            f'({_refused_global(error)}). dsvlm reads checkpoints with '
            'torch.load(weights_only=True) and the types of '
            'dsvlm.utils.safe_load.allowed_globals() only, so that a crafted '
            'file cannot run code; convert a trusted file to a state dict of '
            'tensors (or safetensors) to load it.') from None
    except (OSError, MemoryError):
        raise
    except Exception as error:  # truncated zip, empty file, bad magic ...
        raise _unreadable(name, error) from None


def load_checkpoint_file(path: Union[str, os.PathLike],
                         map_location='cpu') -> Any:
    """A checkpoint file: a ``.safetensors`` file (a flat state dict) or a
    ``.pth`` read with :func:`safe_torch_load`."""
    path = osp.expanduser(str(path))
    if path.endswith('.safetensors'):
        return _load_safetensors(path, map_location)
    return safe_torch_load(path, map_location)


def _load_safetensors(path: str, map_location) -> dict:
    from safetensors.torch import load_file
    if not osp.isfile(path):
        raise FileNotFoundError(f'no checkpoint file at {path!r}')
    device = map_location if isinstance(map_location, str) and \
        map_location != 'default' else 'cpu'
    try:
        return load_file(path, device=device)
    except (OSError, MemoryError):
        raise
    except Exception as error:
        raise _unreadable(path, error) from None


# --------------------------------------------- torch.distributed.checkpoint
def _dcp_allowed(module: str, name: str):
    """The object a DCP ``.metadata`` pickle may name, or None."""
    import pathlib
    if module == 'pathlib' and name in ('Path', 'PosixPath', 'WindowsPath',
                                        'PurePath', 'PurePosixPath',
                                        'PureWindowsPath'):
        return getattr(pathlib, name)
    if module == 'torch':
        value = getattr(torch, name, None)
        if value is torch.Size or isinstance(
                value, (torch.dtype, torch.layout, torch.memory_format)):
            return value
        return None
    if (module, name) == ('torch.serialization', '_get_layout'):
        return torch.serialization._get_layout
    if (module, name) == ('collections', 'OrderedDict'):
        from collections import OrderedDict
        return OrderedDict
    if (module, name) == ('torch.distributed.checkpoint.filesystem',
                          '_StorageInfo'):  # a shard's file, offset, length
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        return _StorageInfo
    if module == 'torch.distributed.checkpoint.metadata' and \
            not name.startswith('__'):
        from torch.distributed.checkpoint import metadata
        value = getattr(metadata, name, None)
        if isinstance(value, type) and value.__module__ == module:
            return value  # DCP's metadata dataclasses and enums
    return None


class _DCPMetadataUnpickler(pickle.Unpickler):

    def find_class(self, module, name):
        value = _dcp_allowed(module, name)
        if value is None:
            raise pickle.UnpicklingError(
                f'{module}.{name} is not a torch.distributed.checkpoint '
                'metadata type')
        return value


def _check_storage_paths(metadata, path: str) -> None:
    """Every shard a DCP ``.metadata`` points to is a file of the
    checkpoint directory itself."""
    for info in (getattr(metadata, 'storage_data', None) or {}).values():
        relative = getattr(info, 'relative_path', '')
        if (osp.isabs(relative) or osp.normpath(relative).startswith('..')
                or osp.dirname(osp.normpath(relative))):
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {path}: its .metadata points '
                f'to {relative!r}, outside the checkpoint directory')


def read_dcp_metadata(path: str, rank: Optional[int] = None):
    """The ``.metadata`` (or a rank's ``__<rank>.metadata``) of the DCP
    directory ``path``, unpickled with DCP's metadata classes only."""
    from torch.distributed.checkpoint.metadata import StorageMeta
    name = '.metadata' if rank is None else f'__{rank}.metadata'
    file = osp.join(str(path), name)
    if not osp.isfile(file):
        raise FileNotFoundError(
            f'{path!r} is not a torch.distributed.checkpoint directory: it '
            f'has no {name} file')
    try:
        with open(file, 'rb') as f:
            metadata = _DCPMetadataUnpickler(f).load()
    except pickle.UnpicklingError as error:
        if 'metadata type' in str(error):
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {file}: its pickle asks for '
                f'{error}') from None
        raise _unreadable(file, error) from None
    except (OSError, MemoryError):
        raise
    except Exception as error:
        raise _unreadable(file, error) from None
    if type(metadata).__name__ != 'Metadata':
        raise CheckpointLoadError(
            f'{file} holds a {type(metadata).__name__}, not DCP Metadata')
    _check_storage_paths(metadata, file)
    if getattr(metadata, 'storage_meta', None) is None:
        metadata.storage_meta = StorageMeta()
    return metadata


@functools.lru_cache(maxsize=None)
def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        """``FileSystemReader`` that reads ``.metadata`` with
        :func:`read_dcp_metadata` instead of ``pickle.load``."""

        def read_metadata(self, *args, **kwargs):
            metadata = read_dcp_metadata(str(self.path), kwargs.get('rank'))
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader


def safe_file_system_reader(path: Union[str, os.PathLike]):
    """A ``torch.distributed.checkpoint.FileSystemReader`` of ``path``
    whose metadata is read by :func:`read_dcp_metadata` (pass it as
    ``dcp.load(..., storage_reader=...)``)."""
    return _safe_reader_class()(path)
