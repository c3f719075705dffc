"""dsvlm.engine.config_keys: a top-level key that no code reads is an error
(a typo of a valid key) or a warning (anything else)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from dsvlm.engine.config import load_config
from dsvlm.engine.config_keys import (CONFIG_HELPERS, ConfigKeyError,
                                      check_config_keys, valid_keys)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                           recursive=True))
TINY = osp.join(ROOT, 'configs', 'tiny', 'llava_tiny.py')
BASE = """model = dict(type='LlavaModel')
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
default_hooks = dict(logger=dict(type='LoggerHook'))
global_batch_size = 8
max_length = 64
"""


def _write(folder, text, name='config.py'):
    path = folder / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('line, key, meant', [
    ("optim_wraper = dict(optimizer=dict(lr=0.01))", 'optim_wraper',
     'optim_wrapper'),
    ("default_hook = dict(logger=dict(interval=1))", 'default_hook',
     'default_hooks'),
    ('glob_batch_size = 256', 'glob_batch_size', 'global_batch_size'),
    ('max_lenght = 4096', 'max_lenght', 'max_length'),
])
def test_a_typo_is_an_error_naming_file_key_and_the_valid_key(
        tmp_path, line, key, meant, logged_warnings):
    # as in a leaf config: the base already sets the key meant
    _write(tmp_path, BASE, 'base.py')
    path = _write(tmp_path, f"_base_ = ['./base.py']\n{line}\n")
    cfg = Config.fromfile(path)
    with pytest.raises(ConfigKeyError) as error:
        check_config_keys(cfg)
    message = str(error.value)
    assert path in message
    assert f"{key!r} (did you mean {meant!r}?)" in message
    assert isinstance(error.value, ValueError)
    with pytest.raises(ConfigKeyError, match=f"did you mean {meant!r}"):
        load_config(path, launcher='none', complete=False)
    assert logged_warnings == []


def test_all_typos_are_named_in_one_error(tmp_path):
    _write(tmp_path, BASE, 'base.py')
    cfg = Config.fromfile(_write(tmp_path, "_base_ = ['./base.py']\n"
                                 'optim_wraper = dict()\nmax_lenght = 1\n'))
    with pytest.raises(ConfigKeyError) as error:
        check_config_keys(cfg)
    assert "'max_lenght' (did you mean 'max_length'?)" in str(error.value)
    assert "'optim_wraper' (did you mean 'optim_wrapper'?)" in str(
        error.value)


def test_an_unrelated_helper_key_only_warns(tmp_path, logged_warnings):
    path = _write(tmp_path, BASE + "my_notes = 'x'\n")
    assert check_config_keys(Config.fromfile(path)) == ['my_notes']
    assert len(logged_warnings) == 1
    warning = logged_warnings[0]
    assert warning.startswith(f"{path}: top-level key(s) that no code "
                              "reads, ignored: 'my_notes'. ")
    assert '`__my_notes`' in warning and 'did you mean' not in warning


def test_a_near_name_next_to_the_key_itself_warns_with_the_closest(
        tmp_path, logged_warnings):
    # the file sets `llm` itself: `llms` is a deliberate variable, not a typo
    path = _write(tmp_path, BASE + "llm = dict(type='A')\nllms = ['A']\n")
    assert check_config_keys(Config.fromfile(path)) == ['llms']
    assert "'llms' (did you mean 'llm'?)" in logged_warnings[0]
    assert 'ignored' in logged_warnings[0]


def test_a_double_underscore_helper_is_dropped_by_mmengine(
        tmp_path, logged_warnings):
    path = _write(tmp_path,
                  BASE + "__notes = 'x'\nmodel = dict(notes=__notes)\n")
    cfg = Config.fromfile(path)
    assert '__notes' not in cfg.keys()
    assert cfg.model.notes == 'x'
    assert check_config_keys(cfg) == []
    assert logged_warnings == []


def test_a_cfg_options_typo_is_caught_by_load_config(logged_warnings):
    with pytest.raises(ConfigKeyError) as error:
        load_config(TINY, {'max_lenght': 1}, launcher='none')
    message = str(error.value)
    assert message.startswith(TINY + ': ')
    assert "'max_lenght' (from --cfg-options) (did you mean 'max_length'?)" \
        in message
    with pytest.raises(ConfigKeyError, match="did you mean 'optim_wrapper'"):
        load_config(TINY, {'optim_wraper.optimizer.lr': 1.0},
                    launcher='none')
    # an unknown option that is no typo is kept, with a warning
    cfg = load_config(TINY, {'my_notes': 'x'}, launcher='none',
                      complete=False)
    assert cfg.my_notes == 'x'
    assert "'my_notes' (from --cfg-options)" in logged_warnings[0]


@pytest.mark.parametrize('path', SHIPPED,
                         ids=[osp.relpath(p, ROOT) for p in SHIPPED])
def test_every_shipped_config_passes_without_a_warning(path,
                                                       logged_warnings):
    assert check_config_keys(Config.fromfile(path)) == []
    assert logged_warnings == []


def test_every_listed_helper_is_declared_by_a_shipped_config():
    declared = set()
    for path in SHIPPED:
        declared.update(Config.fromfile(path).keys())
    assert set(CONFIG_HELPERS) <= declared, 'stale helper names: ' + str(
        set(CONFIG_HELPERS) - declared)


def test_the_runners_keys_are_derived_from_mmengine():
    keys = valid_keys()
    # Runner/FlexibleRunner arguments, and keys read through self.cfg
    for key in ('optim_wrapper', 'default_hooks', 'strategy', 'compile',
                'find_unused_parameters', 'model_wrapper_cfg',
                'init_weights_for_test_or_val', 'runner_type',
                'global_batch_size', 'max_length', 'template'):
        assert key in keys
    assert 'self' not in keys and 'cfg' not in keys
