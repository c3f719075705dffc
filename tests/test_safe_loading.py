"""Safe loading: a crafted checkpoint never runs code, a real one still
loads and resumes, a broken one is an error naming the file.

Every route a checkpoint is read by is tried with pickles whose
``__reduce__`` would create a marker file: dsvlm's ``read_state_dict`` /
``load_pretrained_pth``, MMEngine's loader after ``apply_mmengine_patches``
(``_load_checkpoint``, ``CheckpointLoader``, ``load_checkpoint``),
``tools/test.py`` and ``tools/export_hf.py``, DeepSpeed's readers (its
engine's checkpoint engine and ``zero_to_fp32``) and FSDP2's (DCP's
``.metadata`` and ``extra_state.pth``).  Real checkpoints come from 2-iteration
toy runs of ``tools/train.py`` under the plain runner, DeepSpeed ZeRO-2 and
FSDP2, which then resume to iteration 4.
"""
import builtins
import json
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from tool_loader import load_tool
from toy_modules import write_toy_config
from dsvlm.engine import compat
from dsvlm.models.checkpoint import load_pretrained_pth, read_state_dict
from dsvlm.utils.safe_load import (CheckpointLoadError, UnsafeCheckpointError,
                                   load_checkpoint_file, read_dcp_metadata)

compat.apply_mmengine_patches()

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')

TOY = """
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=2)
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=0.05))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                        begin=0, end=4)]
default_hooks = dict(checkpoint=dict(interval=2, by_epoch=False))
"""
STRATEGIES = dict(
    plain='',
    deepspeed="""
runner_type = 'FlexibleRunner'
strategy = dict(type='DeepSpeedZeroStrategy',
                zero_optimization=dict(stage=2, reduce_bucket_size=1000))
""",
    fsdp="""
runner_type = 'FlexibleRunner'
strategy = dict(type='FSDP2Strategy')
""")
TEST_CONFIG = """
test_dataloader = dict(
    batch_size=4, num_workers=0, collate_fn=dict(type='default_collate'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ToyRegressionDataset', num_samples=8))
test_evaluator = dict(type='ToyMSEMetric')
test_cfg = dict(type='TestLoop')
"""


# --- crafted pickles -------------------------------------------------------
class Exec:
    """Unpickling calls ``exec``: creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f'open({self.marker!r}, "w").close()', ))


class System(Exec):
    """Unpickling calls ``os.system``."""

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class Subprocess(Exec):
    """Unpickling calls ``subprocess.call``."""

    def __reduce__(self):
        return (subprocess.call, (['touch', self.marker], ))


class Getattr(Exec):
    """Unpickling uses the one callable the allow-list has beyond classes,
    ``getattr``, for more than HistoryBuffer's statistics methods (the
    first step of reaching a function's globals)."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


PAYLOADS = (Exec, System, Subprocess, Getattr)


def write_crafted(path, payload, marker, where='state_dict', legacy=False):
    """A ``.pth`` whose payload sits at the top, in ``state_dict``, or in
    the training state (``message_hub``) of an otherwise sound checkpoint."""
    evil = payload(marker)
    weights = {'linear.weight': torch.ones(1, 4), 'linear.bias': torch.ones(1)}
    content = {
        'top': evil,
        'state_dict': dict(state_dict=dict(weights, evil=evil)),
        'message_hub': dict(state_dict=weights, message_hub=dict(x=evil)),
    }[where]
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'MARKER'
    yield path
    assert not path.exists(), 'a crafted checkpoint ran code'


def crafted_files(tmp_path, marker):
    files = [write_crafted(tmp_path / f'{p.__name__}_{w}.pth', p, marker, w)
             for p in PAYLOADS for w in ('top', 'state_dict', 'message_hub')]
    files.append(write_crafted(tmp_path / 'legacy.pth', Exec, marker,
                               legacy=True))
    raw = tmp_path / 'raw.pkl'
    with open(raw, 'wb') as f:
        pickle.dump(dict(state_dict=Exec(marker)), f, protocol=4)
    return files + [str(raw)]


def test_the_payloads_do_run_code_when_unpickled_unrestricted(tmp_path):
    """The control: each crafted file creates the marker with
    ``weights_only=False`` (what MMEngine and DeepSpeed used)."""
    for payload in (Exec, System, Subprocess):
        marker = tmp_path / f'{payload.__name__}.marker'
        path = write_crafted(tmp_path / 'x.pth', payload, marker)
        torch.load(path, weights_only=False)
        assert marker.exists(), payload


def _refuses(load, path):
    """``load(path)`` fails naming the file: as unsafe, or for a pickle
    that ``torch.save`` did not write (``raw.pkl``) as not a checkpoint."""
    expected = CheckpointLoadError if path.endswith('.pkl') else \
        UnsafeCheckpointError
    with pytest.raises(expected) as error:
        load(path)
    assert osp.basename(path) in str(error.value)
    return error.value


def test_dsvlm_readers_refuse_crafted_pickles(tmp_path, marker):
    model = nn.Module()
    model.linear = nn.Linear(4, 1)
    for path in crafted_files(tmp_path, marker):
        _refuses(read_state_dict, path)
        _refuses(lambda p: load_pretrained_pth(model, p), path)
        _refuses(load_checkpoint_file, path)


def test_mmengine_loaders_refuse_crafted_pickles(tmp_path, marker):
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
    model = nn.Linear(4, 1)
    for path in crafted_files(tmp_path, marker):
        _refuses(_load_checkpoint, path)
        _refuses(CheckpointLoader.load_checkpoint, path)
        _refuses(lambda p: load_checkpoint(model, p), path)


def test_mmengine_refuses_remote_checkpoints():
    """MMEngine's http/s3/torchvision/... loaders unpickle unrestricted:
    dsvlm reads local files only."""
    from mmengine.runner.checkpoint import _load_checkpoint
    for url in ('https://example.com/x.pth', 's3://bucket/x.pth',
                'torchvision://resnet50', 'open-mmlab://x'):
        with pytest.raises(ValueError, match='local files only'):
            _load_checkpoint(url)


def test_apply_keeps_the_safe_loaders():
    from mmengine.runner.checkpoint import CheckpointLoader
    before = dict(CheckpointLoader._schemes)
    compat._applied = False
    compat.apply_mmengine_patches()
    assert dict(CheckpointLoader._schemes) == before
    assert all(compat.is_patched(f) for f in before.values())
    assert before[''].__name__ == 'load_from_local_safely'


def test_random_states_load(tmp_path):
    """What a checkpoint may carry to resume the random streams: Python's,
    numpy's (legacy and Generator) and torch's states."""
    import random

    import numpy as np
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  numpy_dict=np.random.get_state(legacy=False),
                  generator=np.random.default_rng(3).bit_generator.state,
                  torch=torch.get_rng_state(),
                  values=[np.float64(1.5), np.int64(2), np.arange(3.)])
    torch.save(dict(meta=dict(rng=states)), tmp_path / 'rng.pth')
    loaded = load_checkpoint_file(tmp_path / 'rng.pth')['meta']['rng']
    assert loaded['python'] == states['python']
    assert loaded['numpy'][0] == 'MT19937'
    assert np.array_equal(loaded['numpy'][1], states['numpy'][1])
    assert loaded['generator'] == states['generator']
    assert torch.equal(loaded['torch'], states['torch'])
    random.setstate(loaded['python'])
    np.random.set_state(loaded['numpy'])
    np.random.set_state(loaded['numpy_dict'])


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file
    weights = {'linear.weight': torch.randn(1, 4),
               'linear.bias': torch.ones(1)}
    save_file(weights, tmp_path / 'w.safetensors')
    state = read_state_dict(str(tmp_path / 'w.safetensors'))
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    from mmengine.runner.checkpoint import _load_checkpoint
    assert set(_load_checkpoint(str(tmp_path / 'w.safetensors'))) == \
        set(weights)


# --- real checkpoints: 2 iterations, then resume -----------------------------
def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO, TESTS] + [p for p in [env.get('PYTHONPATH')] if p])
    env['CUDA_VISIBLE_DEVICES'] = ''
    return env


def _start(args, log):
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO,
                            env=_env(), stdout=open(log, 'w'),
                            stderr=subprocess.STDOUT)


def _wait(procs, timeout=600):
    """Wait for ``(proc, log)`` pairs; return each log's text and rc."""
    results = []
    for proc, log in procs:
        rc = proc.wait(timeout=timeout)
        with open(log) as f:
            results.append((rc, f.read()))
    return results


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A 2-iteration toy run per strategy; each then resumes to 4."""
    root = tmp_path_factory.mktemp('safe_loading')
    configs = {name: write_toy_config(str(root), f'{name}.py', TOY + extra)
               for name, extra in STRATEGIES.items()}
    trained = _wait([(_start(['tools/train.py', configs[n], '--work-dir',
                              root / n], root / f'{n}.log'), root / f'{n}.log')
                     for n in STRATEGIES])
    for name, (rc, log) in zip(STRATEGIES, trained):
        assert rc == 0, f'{name}:\n{log[-3000:]}'
    yield root, configs


@pytest.fixture(scope='module')
def resumed(runs):
    """Each strategy's run resumed to iteration 4 (started together)."""
    root, configs = runs
    results = _wait([
        (_start(['tools/train.py', configs[n], '--work-dir', root / n,
                 '--resume', '--cfg-options', 'train_cfg.max_iters=4',
                 'default_hooks.checkpoint.interval=4'],
                root / f'{n}_resume.log'), root / f'{n}_resume.log')
        for n in STRATEGIES])
    return dict(zip(STRATEGIES, results))


@pytest.mark.parametrize('name', list(STRATEGIES))
def test_a_real_checkpoint_resumes(resumed, runs, name):
    rc, log = resumed[name]
    assert rc == 0, log[-3000:]
    assert 'resumed epoch: 0, iter: 2' in log.lower()
    assert 'Saving checkpoint at 4 iterations' in log
    assert osp.exists(runs[0] / name / 'iter_4.pth')


def test_a_real_checkpoint_needs_the_training_state_allow_list(runs):
    """What the runner saves beyond tensors (message hub, numpy values) is
    refused by plain ``weights_only=True`` and read with the allow-list."""
    path = str(runs[0] / 'plain' / 'iter_2.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    checkpoint = load_checkpoint_file(path)
    assert {'state_dict', 'optimizer', 'message_hub', 'meta',
            'param_schedulers'} <= set(checkpoint)
    hub = checkpoint['message_hub']['log_scalars']['train/loss']
    assert hub.mean() > 0  # a working HistoryBuffer
    for name in STRATEGIES:
        state = read_state_dict(str(runs[0] / name))  # the work_dir's newest
        assert set(state) == {'linear.weight', 'linear.bias'}, name


def _truncate(src, dst):
    with open(src, 'rb') as f:
        data = f.read()
    with open(dst, 'wb') as f:
        f.write(data[:len(data) // 2])


def test_truncated_checkpoints_are_errors_naming_the_file(runs, tmp_path):
    root = runs[0]
    bad = tmp_path / 'iter_2.pth'
    _truncate(root / 'plain' / 'iter_2.pth', bad)
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'text.pth').write_text('not a checkpoint')
    from mmengine.runner.checkpoint import _load_checkpoint
    for path in (bad, tmp_path / 'empty.pth', tmp_path / 'text.pth'):
        for load in (read_state_dict, _load_checkpoint):
            with pytest.raises(CheckpointLoadError,
                               match='truncated, empty or not a checkpoint'
                               ) as error:
                load(str(path))
            assert str(path) in str(error.value)
    # sharded checkpoints: a truncated DeepSpeed file, an FSDP2 shard
    for name, shard in (('deepspeed', 'mp_rank_00_model_states.pt'),
                        ('fsdp', '__0_0.distcp'), ('fsdp', '.metadata')):
        copy = tmp_path / name / 'iter_2.pth'
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root / name / 'iter_2.pth', copy)
        _truncate(root / name / 'iter_2.pth' / shard, copy / shard)
        with pytest.raises(CheckpointLoadError) as error:
            read_state_dict(str(copy))
        assert str(copy) in str(error.value), (name, shard)


def test_the_runner_names_a_truncated_resume_checkpoint(runs, tmp_path):
    """tools/train.py --resume (MMEngine's Runner.resume), in this process."""
    root, configs = runs
    bad = tmp_path / 'iter_2.pth'
    _truncate(root / 'plain' / 'iter_2.pth', bad)
    with pytest.raises(CheckpointLoadError,
                       match=f'cannot read checkpoint {bad}: it is truncated'):
        load_tool('train').main([configs['plain'], '--work-dir',
                                 str(tmp_path), '--resume', str(bad)])


def test_tools_refuse_a_crafted_checkpoint(runs, tmp_path, marker):
    """tools/test.py (``load_from``: MMEngine's loader) and
    tools/export_hf.py (``read_state_dict``), in this process."""
    root, configs = runs
    evil = write_crafted(tmp_path / 'evil.pth', Exec, marker)
    test_config = tmp_path / 'test.py'
    test_config.write_text(f"_base_ = [{configs['plain']!r}]\n" + TEST_CONFIG)
    with pytest.raises(UnsafeCheckpointError,
                       match=f'refusing to load checkpoint {evil}'):
        load_tool('test').main([str(test_config), evil, '--work-dir',
                                str(tmp_path / 'test')])
    with pytest.raises(UnsafeCheckpointError,
                       match=f'refusing to load checkpoint {evil}'):
        load_tool('export_hf').main([configs['plain'], evil,
                                     str(tmp_path / 'export')])


# --- DeepSpeed's readers ---------------------------------------------------
def _crafted_copy(src, dst, filename, marker):
    """``src`` (a checkpoint directory) with ``filename``'s training state
    replaced by a payload."""
    shutil.copytree(src, dst)
    state = torch.load(osp.join(src, filename), weights_only=False)
    state['evil'] = Exec(marker)
    torch.save(state, osp.join(dst, filename))
    return str(dst)


def test_deepspeed_readers_refuse_crafted_pickles(runs, tmp_path, marker):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from dsvlm.engine.strategies.deepspeed_zero import \
        deepspeed_checkpoint_to_state_dict
    src = runs[0] / 'deepspeed' / 'iter_2.pth'
    for filename in ('mp_rank_00_model_states.pt',
                     'zero_pp_rank_0_mp_rank_00_optim_states.pt'):
        crafted = _crafted_copy(src, tmp_path / filename, filename, marker)
        _refuses(deepspeed_checkpoint_to_state_dict, crafted)
        # the engine's reader, as DeepSpeedZeroStrategy.resume scopes it
        engine = type('Engine', (), {})()
        engine.checkpoint_engine = TorchCheckpointEngine()
        with compat.safe_deepspeed_checkpoint_engine(engine):
            _refuses(engine.checkpoint_engine.load,
                     osp.join(crafted, filename))
        assert 'load' not in vars(engine.checkpoint_engine)  # restored
    # the real files load through the same readers
    with compat.safe_deepspeed_checkpoint_engine(engine):
        for filename in os.listdir(src):
            engine.checkpoint_engine.load(str(src / filename))
    assert set(deepspeed_checkpoint_to_state_dict(str(src))) == {
        'linear.weight', 'linear.bias'}


def test_fp16_loss_scaler_state_loads(tmp_path):
    """fp16 (not runnable on a CPU) saves DeepSpeed's DynamicLossScaler in
    the optimizer state: it is on the allow-list."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    scaler = DynamicLossScaler(init_scale=2.**16, scale_window=1000,
                               min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    torch.save(dict(optimizer_state_dict=dict(loss_scaler=scaler)),
               tmp_path / 'optim_states.pt')
    loaded = load_checkpoint_file(tmp_path / 'optim_states.pt')
    assert vars(loaded['optimizer_state_dict']['loss_scaler']) == \
        vars(scaler)


# --- FSDP2 (torch.distributed.checkpoint) ----------------------------------
def test_fsdp2_readers_refuse_crafted_pickles(runs, tmp_path, marker):
    from dsvlm.engine.strategies.fsdp2 import (EXTRA_STATE_FILE, _read_extra,
                                               fsdp2_checkpoint_to_state_dict)
    src = runs[0] / 'fsdp' / 'iter_2.pth'
    assert set(fsdp2_checkpoint_to_state_dict(str(src))) == {
        'linear.weight', 'linear.bias'}
    crafted = _crafted_copy(src, tmp_path / 'extra', EXTRA_STATE_FILE, marker)
    _refuses(_read_extra, crafted)

    # DCP pickles .metadata with plain pickle: an object in it runs code
    crafted = tmp_path / 'metadata'
    shutil.copytree(src, crafted)
    metadata = read_dcp_metadata(str(src))
    metadata.planner_data = Exec(marker)
    with open(crafted / '.metadata', 'wb') as f:
        pickle.dump(metadata, f)
    for load in (read_dcp_metadata, fsdp2_checkpoint_to_state_dict,
                 read_state_dict):
        with pytest.raises(UnsafeCheckpointError, match='metadata'):
            load(str(crafted))

    # and its shards must be files of the checkpoint directory
    metadata = read_dcp_metadata(str(src))
    for info in metadata.storage_data.values():
        info.relative_path = '../../elsewhere.distcp'
    with open(crafted / '.metadata', 'wb') as f:
        pickle.dump(metadata, f)
    with pytest.raises(UnsafeCheckpointError, match='outside'):
        fsdp2_checkpoint_to_state_dict(str(crafted))


# --- trust_remote_code -----------------------------------------------------
CUSTOM_CODE = """
open({marker!r}, 'w').close()
from transformers import LlamaConfig, PreTrainedTokenizerFast


class CustomConfig(LlamaConfig):
    model_type = 'custom_llama'


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _custom_code_dir(path, marker):
    """A local model directory whose config and tokenizer name custom code
    (``auto_map``) that creates the marker when imported."""
    path.mkdir()
    (path / 'custom.py').write_text(CUSTOM_CODE.format(marker=str(marker)))
    (path / 'config.json').write_text(json.dumps(dict(
        model_type='custom_llama', hidden_size=8, intermediate_size=16,
        num_hidden_layers=1, num_attention_heads=2, vocab_size=32,
        auto_map=dict(AutoConfig='custom.CustomConfig',
                      AutoModelForCausalLM='custom.CustomModel'))))
    (path / 'tokenizer_config.json').write_text(json.dumps(dict(
        tokenizer_class='CustomTokenizer',
        auto_map=dict(AutoTokenizer=[None, 'custom.CustomTokenizer']))))
    (path / 'preprocessor_config.json').write_text(json.dumps(dict(
        image_processor_type='CustomImageProcessor',
        auto_map=dict(AutoImageProcessor='custom.CustomImageProcessor'))))
    return str(path)


def test_custom_code_of_a_local_directory_is_not_run(tmp_path, marker,
                                                     monkeypatch):
    from transformers import AutoModelForCausalLM

    from dsvlm.datasets.image_processing import pretrained_image_processor
    from dsvlm.datasets.tokenizers import pretrained_tokenizer
    from dsvlm.models.hf_build import architecture_only, build_hf_module
    path = _custom_code_dir(tmp_path / 'model', marker)
    # transformers asks on a terminal when trust_remote_code is unset; an
    # answer of "y" must never be asked for
    monkeypatch.setattr(builtins, 'input', lambda *a: 'y')
    def architecture_of_the_directory():  # AutoConfig.from_pretrained
        with architecture_only():
            return build_hf_module(AutoModelForCausalLM, path, what='llm')

    for build in (lambda: build_hf_module(AutoModelForCausalLM, path,
                                          what='llm'),
                  architecture_of_the_directory,
                  lambda: pretrained_tokenizer(path),
                  lambda: pretrained_image_processor(path)):
        with pytest.raises(ValueError, match='contains custom code'):
            build()
        assert not marker.exists()


def test_a_config_can_turn_custom_code_on(tmp_path, monkeypatch):
    """The controls: the directory's code runs when a config passes
    ``trust_remote_code=True``, and when transformers is left to ask (an
    unset ``trust_remote_code`` prompts, and "y" runs it)."""
    from transformers import AutoTokenizer

    from dsvlm.datasets.tokenizers import pretrained_tokenizer
    for name, load in (
            ('config', lambda p: pretrained_tokenizer(p,
                                                      trust_remote_code=True)),
            ('prompt', lambda p: AutoTokenizer.from_pretrained(p))):
        marker = tmp_path / f'{name}.ran'
        path = _custom_code_dir(tmp_path / name, marker)
        monkeypatch.setattr(builtins, 'input', lambda *a: 'y')
        try:
            load(path)
        except Exception:  # noqa: BLE001 (no vocabulary: fails after import)
            pass
        assert marker.exists(), name
