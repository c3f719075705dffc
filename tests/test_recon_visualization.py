"""The TensorBoard hook and the trajectory tool of the diffusion supervisor."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from mmengine.registry import init_default_scope
from mmengine.visualization import Visualizer
from PIL import Image

from dsvlm.engine.hooks import ReconVisualizationHook
from dsvlm.registry import MODELS
from dsvlm.utils.image_grid import image_grid
from model_factory import tiny_supervisor_cfg, tiny_vlm_cfg

init_default_scope('dsvlm')
ROOT = Path(__file__).resolve().parents[1]


def test_image_grid_places_tiles():
    a = torch.full((3, 2, 2), -1.0)  # black
    b = torch.ones(3, 2, 2)  # white
    c = torch.zeros(3, 2, 2)  # mid grey
    grid = image_grid([[a, b], [c, a]], pad=1)
    assert grid.shape == (7, 7, 3)
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 4:6] == 255).all()
    assert (grid[4:6, 1:3] == 128).all()
    assert (grid[0] == 255).all()  # padding


def test_hook_logs_side_by_side_images_and_router_weights(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(tiny_vlm_cfg(supervisors=[tiny_supervisor_cfg()]))
    visualizer = Visualizer(
        name='recon_hook_test', save_dir=str(tmp_path),
        vis_backends=[dict(type='LocalVisBackend'),
                      dict(type='TensorboardVisBackend')])
    runner = SimpleNamespace(model=model, visualizer=visualizer, iter=1)
    hook = ReconVisualizationHook(interval=2, max_images=2)
    ids = torch.tensor([[1, 5, -200, 7], [1, 6, -200, 8]])
    inputs = dict(input_ids=ids, attention_mask=ids != 0, labels=ids.clamp(0),
                  pixel_values=torch.randn(2, 3, 32, 32),
                  has_image=torch.tensor([True, True]))
    hook.before_train_iter(runner, 1)
    assert model.supervisors[0].keep_last
    model(inputs, None, mode='loss')
    hook.after_train_iter(runner, 1)
    assert not model.supervisors[0].keep_last
    assert model.supervisors[0].last_images is None
    png = tmp_path / 'vis_data' / 'vis_image' / 'recon_0_2.png'
    image = np.asarray(Image.open(png))
    # 2 rows x (original | reconstruction) of 16x16 tiles, 2-pixel padding
    assert image.shape == (2 * 18 + 2, 2 * 18 + 2, 3)
    scalars = [json.loads(line) for line in
               (tmp_path / 'vis_data' / 'scalars.json').read_text().splitlines()]
    router = {k: v for k, v in scalars[-1].items() if k.startswith('router')}
    layers = {k.rsplit('/', 1)[0] for k in router}
    assert len(layers) == len(model.supervisors[0].cross_attention)
    for layer in layers:
        total = sum(router[f'{layer}/P{j}'] for j in range(4))
        assert abs(total - 1) < 1e-5
    assert list((tmp_path / 'vis_data').glob('events.out.tfevents.*'))
    # not due on the next iteration: nothing kept
    runner.iter = 2
    hook.before_train_iter(runner, 2)
    assert not model.supervisors[0].keep_last
