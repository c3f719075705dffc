"""tools/dist_train.sh and tools/slurm_train.sh: what they hand to torchrun
and srun, on one node and several (recorded by stand-ins on PATH)."""
import os
import os.path as osp
import stat
import subprocess

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECORDER = """#!/usr/bin/env bash
for a in "$@"; do printf '%s\\n' "$a"; done > "{out}"
"""


def _recorder(folder, name):
    out = osp.join(folder, f'{name}.args')
    path = osp.join(folder, name)
    with open(path, 'w') as f:
        f.write(RECORDER.format(out=out))
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path, out


def _run(cmd, **env):
    full = dict(os.environ, **env)
    result = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _args(out):
    with open(out) as f:
        return f.read().splitlines()


def test_dist_train_two_nodes(tmp_path):
    python, out = _recorder(str(tmp_path), 'python')
    _run(['bash', 'tools/dist_train.sh', 'configs/dsvlm/siglip_vicuna7b.py',
          '8', '--strategy', 'deepspeed_zero3', '--cfg-options', 'a=b c'],
         PYTHON=python, NNODES='2', NODE_RANK='1', MASTER_ADDR='10.1.2.3',
         PORT='29600')
    args = _args(out)
    assert args[:2] == ['-m', 'torch.distributed.run']
    for flag in ('--nnodes=2', '--node_rank=1', '--master_addr=10.1.2.3',
                 '--nproc_per_node=8', '--master_port=29600'):
        assert flag in args
    script = next(i for i, a in enumerate(args) if a.endswith('train.py'))
    assert args[script + 1:] == [
        'configs/dsvlm/siglip_vicuna7b.py', '--launcher', 'pytorch',
        '--strategy', 'deepspeed_zero3', '--cfg-options', 'a=b c']


def test_slurm_train_passes_work_dir_and_arguments(tmp_path):
    srun, out = _recorder(str(tmp_path), 'srun')
    path = f'{tmp_path}{os.pathsep}{os.environ["PATH"]}'
    _run(['bash', 'tools/slurm_train.sh', 'gpu', 'job',
          'configs/dsvlm/siglip_vicuna7b.py', 'work_dirs/x', '--strategy',
          'fsdp'], PATH=path, GPUS='16')
    args = _args(out)
    assert '--ntasks=16' in args and '--ntasks-per-node=8' in args
    assert '--gres=gpu:8' in args and args[args.index('-p') + 1] == 'gpu'
    train = next(i for i, a in enumerate(args) if a.endswith('train.py'))
    assert args[train + 1:] == [
        'configs/dsvlm/siglip_vicuna7b.py', '--launcher=slurm',
        '--work-dir=work_dirs/x', '--strategy', 'fsdp']
    # WORK_DIR is optional
    _run(['bash', 'tools/slurm_train.sh', 'gpu', 'job', 'c.py',
          '--resume'], PATH=path, GPUS='4')
    args = _args(out)
    assert '--ntasks=4' in args and '--ntasks-per-node=4' in args
    train = next(i for i, a in enumerate(args) if a.endswith('train.py'))
    assert args[train + 1:] == ['c.py', '--launcher=slurm', '--resume']
