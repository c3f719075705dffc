"""The tiny world end to end through the tools: the two-stage chain, DS-VLM
training with its visualisations, and testing without the diffusion branch.
A miniature world and a few iterations keep it fast."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from mmengine.registry import init_default_scope
from PIL import Image

from dsvlm.engine.config import load_config
from dsvlm.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
WORLD = dict(num_images_train=48, num_images_test=8, num_text_only=4)


def world_options(data_root, iters):
    opts = [f'tokenizer.data_root={data_root}']
    opts += [f'tokenizer.{k}={v}' for k, v in WORLD.items()]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts.append(f'{loader}.dataset.data_root={data_root}')
        opts += [f'{loader}.dataset.world.{k}={v}' for k, v in WORLD.items()]
    opts += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
             'train_dataloader.batch_size=4', 'val_dataloader.batch_size=8',
             f'default_hooks.checkpoint.interval={iters}',
             'default_hooks.logger.interval=1']
    return opts


def run_tool(*args):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def train(config, work_dir, data_root, iters, *extra):
    options = world_options(data_root, iters)
    if 'pretrain' in str(config):
        options = [o for o in options if not o.startswith(('val_', 'test_'))]
    return run_tool('tools/train.py', config, '--work-dir', work_dir,
                    '--cfg-options', *options, *extra)


def test_stage2_starts_from_the_stage1_connector(tmp_path):
    data_root = tmp_path / 'world'
    stage1 = tmp_path / 'stage1'
    train('configs/tiny/llava_tiny_pretrain.py', stage1, data_root, 3)
    ckpt = torch.load(stage1 / 'iter_3.pth', map_location='cpu',
                      weights_only=False)['state_dict']
    # stage 1 trains (and so saves) only the connector
    assert ckpt and all(k.startswith('connector.') for k in ckpt)

    cfg = load_config(ROOT / 'configs/tiny/llava_tiny.py',
                      dict(x.split('=', 1) for x in
                           [f'model.pretrained_pth={stage1}']))
    cfg.model.tokenizer = None
    init_default_scope('dsvlm')
    torch.manual_seed(123)
    stage2 = MODELS.build(cfg.model)
    for name, param in stage2.connector.named_parameters():
        assert torch.equal(param, ckpt[f'connector.{name}']), name

    log = train('configs/tiny/llava_tiny.py', tmp_path / 'stage2', data_root,
                2, f'model.pretrained_pth={stage1}')
    assert 'Loaded 4 tensors from' in log and 'accuracy:' in log


def test_dsvlm_tiny_trains_visualizes_and_tests_without_supervisor(tmp_path):
    data_root = tmp_path / 'world'
    work_dir = tmp_path / 'dsvlm'
    log = train('configs/tiny/dsvlm_tiny.py', work_dir, data_root, 2,
                'custom_hooks.0.interval=1')
    assert 'loss_recon_mae:' in log and 'accuracy:' in log
    images = list((work_dir).rglob('vis_image/recon_0_*.png'))
    assert len(images) == 2  # one per iteration at interval 1
    assert list(work_dir.rglob('events.out.tfevents.*'))
    state = torch.load(work_dir / 'iter_2.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    assert any(k.startswith('supervisors.0.cross_attention.') for k in state)

    # testing builds no diffusion branch and expects none of its weights
    out = run_tool('tools/test.py', 'configs/tiny/dsvlm_tiny.py',
                   work_dir / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                   '--cfg-options', *world_options(data_root, 2))
    assert 'accuracy:' in out
    assert 'unexpected key' not in out and 'missing keys' not in out

    # the denoising trajectory of two images as a PNG
    png = tmp_path / 'traj.png'
    pictures = sorted((data_root / 'images').glob('test_*.png'))[:2]
    run_tool('tools/visualize_recon.py', 'configs/tiny/dsvlm_tiny.py',
             work_dir / 'iter_2.pth', *pictures, '--out', png, '--steps', 10,
             '--snapshots', 5, '--cfg-options', *world_options(data_root, 2))
    grid = np.asarray(Image.open(png))
    # 2 rows x (input + 5 snapshots) of 32x32 tiles with 2-pixel padding
    assert grid.shape == (2 * 34 + 2, 6 * 34 + 2, 3)
