"""Top-level config keys that no code reads: a typo is an error.

MMEngine's runners read the keys they know and ignore the rest, so
``optim_wraper = dict(...)`` would train with the base's optimizer.
:func:`check_config_keys` compares a config's top-level keys with those that
some code reads (:func:`valid_keys`):

* MMEngine's: the arguments of ``Runner`` and ``FlexibleRunner`` (their
  ``from_cfg`` passes the config's keys of those names), the keys their
  methods read from ``self.cfg``, and :data:`MMENGINE_KEYS`;
* dsvlm's: :data:`~dsvlm.engine.config.SHARED_KEYS`, the benchmark keys and
  :data:`DSVLM_KEYS`;
* :data:`CONFIG_HELPERS`, the variables that the configs under ``configs/``
  declare at top level to use further down.

A key that no code reads and that is close to a valid key (``difflib``,
cutoff 0.8) is a typo, :class:`ConfigKeyError`, unless the place that sets
it also sets that valid key itself (:func:`own_keys`: the config file's own
assignments, not its bases', or ``--cfg-options``): a base's
``optim_wrapper`` does not excuse a leaf's ``optim_wraper``.  Other unknown
keys get one warning.  Names that start with ``_`` are skipped; MMEngine
drops those starting with ``__`` from the config altogether.
"""
import ast
import difflib
import functools
import inspect
import logging
import re

from mmengine.logging import print_log

from .benchmark import BENCHMARK_KEYS
from .config import SHARED_KEYS

# Read by MMEngine outside the runners' arguments and ``self.cfg``.
MMENGINE_KEYS = (
    'runner_type',  # mmengine.registry.build_runner_from_cfg: which runner
    'custom_imports',  # Config.fromfile: modules to import
)
# Read by dsvlm itself (besides SHARED_KEYS and BENCHMARK_KEYS).
DSVLM_KEYS = (
    'global_batch_size',  # engine.config.set_gradient_accumulation
    'strategy_name',  # set by engine.strategy_config.apply_strategy
    'diffusion_supervisor',  # tools/benchmark_reconstruction.py
)
# Helper variables that shipped configs declare at top level and use below
# (tests/test_config_keys.py: each is declared by some config, and every
# shipped config's keys are known).
CONFIG_HELPERS = (
    'vision_encoder',  # _base_/models/<encoder>.py: plugged into `model`
    'llm',  # _base_/models/<llm>.py: plugged into `model`
    'vis_backends',  # _base_/default_runtime.py: in `visualizer`
    'data_root', 'world', 'max_iters',  # tiny/: the tiny world's settings
    'lmu_data', 'prediction_file',  # benchmarks/_tsv_benchmark.py
)
SIMILARITY = 0.8  # difflib ratio above which an unknown key is a typo

_SELF_CFG_READ = re.compile(r"\b(?:self\.)?cfg(?:\.get\(|\[)\s*['\"](\w+)")


class ConfigKeyError(ValueError):
    """A top-level config key that no code reads, close to a valid one."""


def runner_keys(runner_cls) -> set:
    """The keys ``runner_cls`` reads: its ``__init__`` arguments (which
    ``from_cfg`` takes from the config by name) and the keys its source
    reads from ``cfg``/``self.cfg`` by name."""
    keys = set(inspect.signature(runner_cls.__init__).parameters)
    try:
        keys |= set(_SELF_CFG_READ.findall(inspect.getsource(runner_cls)))
    except (OSError, TypeError):  # no source: the arguments only
        pass
    return keys - {'self', 'cfg', 'args', 'kwargs'}


@functools.lru_cache(maxsize=None)
def valid_keys() -> frozenset:
    """Every top-level key that some code reads, or a shipped config uses."""
    from mmengine.runner import FlexibleRunner, Runner
    keys = runner_keys(Runner) | runner_keys(FlexibleRunner)
    keys.update(MMENGINE_KEYS, SHARED_KEYS, BENCHMARK_KEYS, DSVLM_KEYS,
                CONFIG_HELPERS)
    return frozenset(keys)


def unknown_keys(cfg) -> dict:
    """``{key: closest valid key or None}`` for each top-level key of
    ``cfg`` that no code reads (names starting with ``_`` are skipped)."""
    valid = valid_keys()
    unknown = {}
    for key in cfg.keys():
        if key.startswith('_') or key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=SIMILARITY)
        unknown[key] = close[0] if close else None
    return unknown


def _assigned_names(filename) -> set:
    """The top-level names a Python config file assigns itself."""
    with open(filename, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename)
    targets = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets += node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets.append(node.target)
    return {n.id for t in targets for n in ast.walk(t)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def own_keys(cfg, key, cfg_options=()) -> set:
    """The top-level keys set in the same place as ``key``: by
    ``--cfg-options`` (the top-level names of ``cfg_options``) when they set
    it, else by the config file itself (not its bases); all of ``cfg``'s
    keys when it has no Python file."""
    options = {k.split('.')[0] for k in cfg_options}
    if key in options:
        return options
    filename = str(getattr(cfg, 'filename', None) or '')
    if filename.endswith('.py'):
        try:
            return _assigned_names(filename)
        except (OSError, SyntaxError, ValueError):
            pass
    return set(cfg.keys())


def _describe(key, close, cfg_options):
    origin = ' (from --cfg-options)' if key in cfg_options else ''
    hint = f' (did you mean {close!r}?)' if close else ''
    return f'{key!r}{origin}{hint}'


def check_config_keys(cfg, source=None, cfg_options=None) -> list:
    """Reject or report the top-level keys of ``cfg`` that no code reads.

    Args:
        cfg (Config | dict): the whole config.
        source (str, optional): what to name in messages; defaults to
            ``cfg.filename``.
        cfg_options (dict, optional): the ``--cfg-options`` merged into
            ``cfg``; a key they set is said to come from there.

    Returns:
        list: the unknown keys (sorted), after one warning listing them.

    Raises:
        ConfigKeyError: if an unknown key is close to a valid key that the
            place setting it (:func:`own_keys`) does not set itself.
    """
    unknown = unknown_keys(cfg)
    if not unknown:
        return []
    source = source or getattr(cfg, 'filename', None) or 'the config'
    cfg_options = cfg_options or {}
    from_options = {k.split('.')[0] for k in cfg_options}
    typos = sorted(k for k, close in unknown.items() if close is not None
                   and close not in own_keys(cfg, k, cfg_options))
    if typos:
        listed = ', '.join(_describe(k, unknown[k], from_options)
                           for k in typos)
        raise ConfigKeyError(
            f'{source}: top-level key(s) that no code reads: {listed}. '
            'Correct the name, or start a helper variable with `__` to keep '
            'it out of the config.')
    listed = ', '.join(_describe(k, unknown[k], from_options)
                       for k in sorted(unknown))
    print_log(
        f'{source}: top-level key(s) that no code reads, ignored: {listed}. '
        'Start a helper variable\'s name with `__` (e.g. '
        f'`__{sorted(unknown)[0]}`) to keep it private to the config file.',
        logger='current', level=logging.WARNING)
    return sorted(unknown)
