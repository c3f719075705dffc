"""What a training step of a config costs, and what its supervision adds.

    python tools/benchmark.py CONFIG --flops [--text-tokens N]
        [--supervised-tokens N] [--json OUT] [--cfg-options k=v ...]

``--flops`` counts the FLOPs of one training micro-step of the config at
its real size on the meta device (no weights are read, nothing is
computed; a 13B model takes seconds), split by part and by forward and
backward: vision encoder, connector, LLM, and each supervisor's adapters,
VAE encode, UNet passes, VAE decode and loss network
(:mod:`dsvlm.profiling.step_flops`).  It prints the supervision's FLOP
overhead over the VLM's step: the floor that a measured step-time overhead
is compared with.  The batch is the config's micro-batch; a sample has
``--text-tokens`` text tokens (default: a typical sample of the stage,
pretraining captions or instruction conversations; pass the median that
``tools/check_data.py`` prints for your data) and the encoder's image
features.
"""
import argparse
import contextlib
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

with contextlib.redirect_stdout(sys.stderr):  # import-time notices
    from mmengine.config import DictAction  # noqa: E402

    from dsvlm.engine.config import load_config  # noqa: E402
    from dsvlm.profiling.step_flops import (default_shape,  # noqa: E402
                                            llava_step_flops, summarize)
    from dsvlm.profiling.meta_model import build_meta_model  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--flops', action='store_true',
                        help='count the FLOPs of one step on the meta device')
    parser.add_argument('--text-tokens', type=int,
                        help='text tokens per sample (default: typical of '
                        'the stage)')
    parser.add_argument('--supervised-tokens', type=int,
                        help='supervised tokens per sample')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if not args.flops:
        parser.error('choose what to benchmark: --flops')
    return args


def count_flops(cfg, text_tokens=None, supervised_tokens=None) -> dict:
    """The FLOP split of one micro-step of ``cfg`` (see the module doc)."""
    model = build_meta_model(cfg)
    shape = default_shape(cfg, model.vision_encoder.image_size, text_tokens,
                          supervised_tokens)
    parts = llava_step_flops(model, shape)
    return dict(
        shape=vars(shape),
        parts={name: dict(forward=p.forward, backward=p.backward)
               for name, p in parts.items()},
        **summarize(parts))


def format_flops(result, name) -> str:
    shape = result['shape']
    total = sum(p['forward'] + p['backward']
                for p in result['parts'].values())
    unit, scale = ('TFLOP', 1e12) if total >= 1e12 else ('GFLOP', 1e9)
    lines = [f'== {name}: one micro-step of {shape["batch_size"]} samples '
             f'({shape["text_tokens"]} text tokens, '
             f'{shape["supervised_tokens"]} supervised, '
             f'{shape["image_size"]} px images), {unit}',
             f'{"part":30s} {"forward":>10s} {"backward":>10s} '
             f'{"total":>10s} {"share":>7s}']
    for part, flops in result['parts'].items():
        both = flops['forward'] + flops['backward']
        lines.append(f'{part:30s} {flops["forward"] / scale:10.3f} '
                     f'{flops["backward"] / scale:10.3f} '
                     f'{both / scale:10.3f} {both / total:7.1%}')
    lines.append(f'VLM step {result["vlm"] / scale:.3f} {unit}, supervision '
                 f'{result["supervision"] / scale:.3f} {unit}: FLOP overhead '
                 f'{result["overhead"]:+.1%}')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        cfg = load_config(args.config, args.cfg_options, launcher='none')
        result = count_flops(cfg, args.text_tokens, args.supervised_tokens)
    print(format_flops(result, args.config))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, flops=result), f, indent=1)
    return result


if __name__ == '__main__':
    main()
