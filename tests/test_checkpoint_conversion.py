"""Sharded checkpoints become plain ones, and stage 2 starts from a stage 1
that ran under another strategy and another number of processes.

Stage 1 of the tiny world runs under FSDP2 in 2 processes; stage 2 is
built in one process without any engine.  The reference is the checkpoint
read by torch.distributed.checkpoint's own converter, never the one under
test.  DeepSpeed checkpoints go through the same reader: the ZeRO-3 run of
tests/test_rank_divergence.py is compared through it, and
tests/test_deepspeed_strategy.py checks the DeepSpeed reader itself.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.registry import init_default_scope

from dsvlm.engine.config import load_config
from dsvlm.models.checkpoint import checkpoint_format, read_state_dict
from dsvlm.registry import MODELS
from test_tiny_world_training import world_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STAGE1 = 'configs/tiny/llava_tiny_pretrain.py'
ITERS = 2


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def _run(cmd):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
               PORT=_free_port(), PYTHON=sys.executable)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, osp.join(ROOT, 'tests')])
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    return out


def _options(data_root):
    return [o for o in world_options(data_root, ITERS)
            if not o.startswith(('val_', 'test_'))]


def _stage1(tmp_path, strategy, processes):
    data_root, work_dir = tmp_path / 'world', tmp_path / strategy
    args = [STAGE1, '--work-dir', work_dir, '--strategy', strategy,
            '--cfg-options', *_options(data_root)]
    if processes == 1:
        _run([sys.executable, 'tools/train.py', *args])
    else:
        _run(['bash', 'tools/dist_train.sh', args[0], processes, *args[1:]])
    return data_root, work_dir


def _stage2_connector(stage1):
    cfg = load_config(osp.join(ROOT, 'configs/tiny/llava_tiny.py'))
    cfg.merge_from_dict(dict(model=dict(pretrained_pth=str(stage1),
                                        tokenizer=None)))
    init_default_scope('dsvlm')
    torch.manual_seed(321)  # another init than stage 1's
    return MODELS.build(cfg.model).connector


def _check_chain(tmp_path, work_dir, expected_format, reference):
    newest = open(work_dir / 'last_checkpoint').read().strip()
    assert osp.isdir(newest) and checkpoint_format(newest) == expected_format
    # stage 1 trains the connector only: that is what the checkpoint holds
    assert reference and all(k.startswith('connector.') for k in reference)

    out = tmp_path / 'plain.pth'
    _run([sys.executable, 'tools/convert_checkpoint.py', work_dir, out])
    plain = torch.load(out, map_location='cpu', weights_only=False)
    assert plain['meta']['source_format'] == expected_format
    assert sorted(plain['state_dict']) == sorted(reference)
    for key, value in reference.items():
        assert torch.equal(plain['state_dict'][key], value), key

    # stage 2 starts from the stage-1 work_dir, in one process
    connector = _stage2_connector(work_dir)
    for name, param in connector.named_parameters():
        assert torch.equal(param.detach(), reference[f'connector.{name}'])


def test_fsdp2_stage1_on_two_processes_feeds_stage2_on_one(tmp_path):
    _, work_dir = _stage1(tmp_path, 'fsdp', 2)
    newest = open(work_dir / 'last_checkpoint').read().strip()
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    whole = tmp_path / 'dcp_whole.pt'
    dcp_to_torch_save(newest, str(whole))  # torch's own reader
    saved = torch.load(whole, map_location='cpu', weights_only=False)
    # the model's weights are under 'state_dict', beside the optimizer's
    reference = {k: v for k, v in saved['state_dict'].items()
                 if k.startswith('connector.')}
    _check_chain(tmp_path, work_dir, 'dcp', reference)


def test_a_directory_that_is_no_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match='neither a checkpoint'):
        read_state_dict(str(tmp_path))
