"""Cost of multi-step reconstruction: one DiffusionSupervisor training step
(forward and backward of ``loss``) with ``sampling_steps=1`` vs ``N``.

    python tools/benchmark_reconstruction.py [--steps 50] [--batch 1]
        [--image-size 256] [--repeats 3] [--skip-flops] [--skip-timing]

(a) FLOPs at SD-1.5 size: the recipe's supervisor
    (``configs/_base_/supervisors/diffusion_sd15.py``: UNet 860M, VAE 84M,
    LPIPS-VGG, MoE cross-attention; UNet and VAE frozen) on the features of
    CLIP-L/14-336 and Vicuna-7B, random weights, fp32, counted with
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
    attention; elementwise ops are not counted).  The count runs a real
    batch on the CPU, not the meta device: ``loss`` branches on tensor
    values (which rows have an image), which meta tensors do not have.
    Attention runs PyTorch's math backend while counting, so that its
    matmuls are counted (the counter has no formula for the CPU flash
    kernel).  It
    runs ``sampling_steps=1`` and ``2``; each further step adds the same
    work (one UNet forward and its backward; DDIM's update is elementwise),
    so ``F(N) = F(1) + (N-1) (F(2) - F(1))``.  The small supervisor of (b)
    checks that rule against a direct count at ``N``.
(b) Wall-clock seconds per step on this CPU for the tiny world's supervisor
    (``configs/tiny/dsvlm_tiny.py``; UNet and VAE frozen as in the paper),
    1 vs N steps measured in turns in the same run: median of ``--repeats``
    after a warm-up.
"""
import argparse
import contextlib
import os.path as osp
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

with contextlib.redirect_stdout(sys.stderr):  # deepspeed's import notice
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from dsvlm.datasets.image_processing import (OPENAI_CLIP_MEAN,
                                                 OPENAI_CLIP_STD)
    from dsvlm.models.features import VisualFeatures
    from dsvlm.models.hf_build import architecture_only
    from dsvlm.registry import SUPERVISORS

SD15_CONFIG = osp.join(ROOT, 'configs/_base_/supervisors/diffusion_sd15.py')
TINY_CONFIG = osp.join(ROOT, 'configs/tiny/dsvlm_tiny.py')
# What the VLM tells the supervisor, the supervised encoder layers and the
# shapes of the features the supervisor reads.
CLIP_L_336_VICUNA_7B = dict(encoder_dim=1024, encoder_num_layers=24,
                            connector_dim=4096, pixels=336, patches=576,
                            image_layers=dict(low=8, mid=16, high=24))
TINY_WORLD = dict(encoder_dim=64, encoder_num_layers=4, connector_dim=128,
                  pixels=32, patches=16,
                  image_layers=dict(low=1, mid=2, high=3))


def build_supervisor(config_file, vlm, steps, **overrides):
    """The config's supervisor, ``sampling_steps=steps``; the timestep range
    starts at ``steps - 1`` so that 1 and ``steps`` share one model."""
    cfg = Config.fromfile(config_file).diffusion_supervisor
    cfg.update(sampling_steps=steps, timestep_range=(steps - 1, 1000),
               **overrides)
    args = {k: vlm[k] for k in ('encoder_dim', 'connector_dim',
                                'encoder_num_layers')}
    args['encoder_levels'] = vlm['image_layers']  # what the VLM passes
    with architecture_only():  # random weights, nothing read from disk
        return SUPERVISORS.build(cfg, default_args=args)


def random_features(vlm, batch):
    """Encoder hidden states (CLS + patches, every layer) and connector
    output, as leaves that take the gradient the encoder would get."""
    tokens = vlm['patches'] + 1
    hidden = tuple(torch.randn(batch, tokens, vlm['encoder_dim'],
                               requires_grad=True)
                   for _ in range(vlm['encoder_num_layers'] + 1))
    return VisualFeatures(
        pixel_values=torch.randn(batch, 3, vlm['pixels'], vlm['pixels']),
        encoder_hidden_states=hidden, encoder_tokens=hidden[-2][:, 1:],
        connector_output=torch.randn(batch, vlm['patches'],
                                     vlm['connector_dim'], requires_grad=True),
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


def train_step(sup, features, steps):
    sup.sampling_steps = steps
    losses = sup.loss(features)
    sum(losses.values()).backward()


def count_flops(sup, features, steps):
    """FLOPs of one step (forward and backward)."""
    with sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        train_step(sup, features, steps)
    return counter.get_total_flops()


def seconds_per_step(sup, features, modes, repeats):
    """Median seconds per step of each ``sampling_steps`` in ``modes``,
    timed in turns (so that a slower spell of a shared CPU hits both)."""
    times = {steps: [] for steps in modes}
    for round_ in range(repeats + 1):  # round 0: warm-up
        for steps in modes:
            start = time.perf_counter()
            train_step(sup, features, steps)
            if round_:
                times[steps].append(time.perf_counter() - start)
    return {steps: statistics.median(t) for steps, t in times.items()}


def tflop(flops):
    return f'{flops / 1e12:.3f} TFLOP'


def sd15_flops(args):
    print(f'(a) FLOPs of one supervisor step at SD-1.5 size: batch '
          f'{args.batch}, {args.image_size} px, fp32, CLIP-L/14-336 + '
          'Vicuna-7B features (counted on the CPU, takes a while)')
    torch.manual_seed(0)
    sup = build_supervisor(SD15_CONFIG, CLIP_L_336_VICUNA_7B, 2,
                           image_size=args.image_size)
    features = random_features(CLIP_L_336_VICUNA_7B, args.batch)
    one = count_flops(sup, features, 1)
    step = count_flops(sup, features, 2) - one
    many = one + (args.steps - 1) * step
    print(f'    sampling_steps=1:  {tflop(one)}  (VAE encode, one UNet '
          'forward, VAE decode, LPIPS, adapters; their backward)')
    print(f'    each further step: {tflop(step)}  (one UNet forward and its '
          'backward)')
    print(f'    sampling_steps={args.steps}: {tflop(many)}  = F(1) + '
          f'{args.steps - 1} x {tflop(step)}')
    print(f'    ratio {args.steps} : 1 = {many / one:.2f}')


def tiny_timing(args):
    print(f'(b) one supervisor step of the tiny world\'s supervisor '
          f'(UNet/VAE frozen, {TINY_WORLD["pixels"]} px), batch {args.batch}, '
          f'CPU, {torch.get_num_threads()} threads')
    torch.manual_seed(0)
    sup = build_supervisor(TINY_CONFIG, TINY_WORLD, args.steps,
                           unet_train_mode='frozen', vae_train_mode='frozen')
    features = random_features(TINY_WORLD, args.batch)
    counts = {n: count_flops(sup, features, n)
              for n in sorted({1, 2, args.steps})}
    rule = counts[1] + (args.steps - 1) * (counts[2] - counts[1])
    print(f'    FLOPs: sampling_steps=1 {counts[1] / 1e9:.3f} GFLOP, '
          f'sampling_steps={args.steps} {counts[args.steps] / 1e9:.3f} GFLOP '
          f'(ratio {counts[args.steps] / counts[1]:.2f}); F(1) + (N-1) '
          f'(F(2) - F(1)) = {rule / 1e9:.3f} GFLOP: '
          + ('exact' if rule == counts[args.steps] else 'MISMATCH'))
    times = seconds_per_step(sup, features, (1, args.steps), args.repeats)
    print(f'    seconds per step: sampling_steps=1 {times[1]:.4f} s, '
          f'sampling_steps={args.steps} {times[args.steps]:.4f} s, ratio '
          f'{times[args.steps] / times[1]:.2f} (median of {args.repeats})')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=50,
                        help='N of sampling_steps=N (compared with 1)')
    parser.add_argument('--batch', type=int, default=1,
                        help='images reconstructed per step')
    parser.add_argument('--image-size', type=int, default=256,
                        help='supervisor.image_size of the SD-1.5 count')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed steps per mode in (b)')
    parser.add_argument('--skip-flops', action='store_true',
                        help='skip (a), the slow SD-1.5 count')
    parser.add_argument('--skip-timing', action='store_true',
                        help='skip (b)')
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error('--steps must be >= 2 (it is compared with 1)')
    return args


def main(argv=None):
    args = parse_args(argv)
    init_default_scope('dsvlm')
    if not args.skip_flops:
        sd15_flops(args)
    if not args.skip_timing:
        tiny_timing(args)


if __name__ == '__main__':
    main()
