"""Write DS-VLM's denoising trajectory, from noise to image, as a PNG
(the paper's Figure 5).

    python tools/visualize_recon.py CONFIG CHECKPOINT IMAGE [IMAGE ...]
        [--out recon.png] [--steps 50] [--snapshots 8] [--seed 0]

CONFIG is a training config with a ``DiffusionSupervisor``; CHECKPOINT a
checkpoint of that run (its supervisor weights are needed).  Each row of the
PNG is one image: the encoder's input (after the data pipeline), then the
DDIM estimate of the clean image at ``--snapshots`` points of ``--steps``
steps, the last being the final reconstruction.  Cost: ``--steps`` UNet
evaluations and ``--snapshots`` VAE decodes per image, without gradient.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from PIL import Image  # noqa: E402

from dsvlm.datasets.image_processing import (build_image_processor,  # noqa
                                             preprocess_image)
from dsvlm.engine.config import load_config  # noqa: E402
from dsvlm.registry import MODELS  # noqa: E402
from dsvlm.utils.image_grid import image_grid  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--out', default='recon_trajectory.png')
    parser.add_argument('--steps', type=int, default=50)
    parser.add_argument('--snapshots', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--supervisor', type=int, default=0,
                        help='index in model.supervisors')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def load_images(paths, cfg):
    if cfg.get('image_processor') is None:
        raise ValueError(f'{cfg.filename}: needs a top-level image_processor')
    processor = build_image_processor(cfg.image_processor)
    tensors = []
    for path in paths:
        try:
            image = Image.open(path).convert('RGB')
        except (OSError, ValueError) as e:
            raise ValueError(f'cannot read image {path!r}: {e}') from e
        tensors.append(preprocess_image(image, processor, 'pad'))
    return torch.stack(tensors)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'dsvlm'))
    if not cfg.model.get('supervisors'):
        raise ValueError(f'{args.config} has no supervisors: use a DS-VLM '
                         'training config')
    model = MODELS.build(dict(cfg.model, pretrained_pth=None))
    load_checkpoint(model, args.checkpoint, map_location='cpu')
    model.eval()
    supervisor = model.supervisors[args.supervisor]
    pixel_values = load_images(args.images, cfg)
    with torch.no_grad():
        features = model.encode_images(pixel_values)
        snapshots = supervisor.reconstruct(features, args.steps,
                                           args.snapshots, seed=args.seed)
        originals = supervisor.target_images(
            features, torch.ones(len(pixel_values), dtype=torch.bool)).float()
    size = snapshots[0].shape[-2:]
    originals = F.interpolate(originals, size=size, mode='bilinear',
                              align_corners=False)
    rows = [[originals[i]] + [s[i] for s in snapshots]
            for i in range(len(args.images))]
    Image.fromarray(image_grid(rows)).save(args.out)
    print(f'wrote {args.out}: {len(rows)} image(s) x (input + '
          f'{len(snapshots)} steps of a {args.steps}-step DDIM trajectory)')


if __name__ == '__main__':
    main()
