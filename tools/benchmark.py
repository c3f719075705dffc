"""What a training step of a config costs, and what its supervision adds.

    python tools/benchmark.py CONFIG [--steps 20] [--warmup 3]
        [--random-init] [--json OUT] [--cfg-options k=v ...]
    python tools/benchmark.py CONFIG --flops [--text-tokens N]
        [--supervised-tokens N] [--json OUT]

Without ``--flops`` it measures (:mod:`dsvlm.profiling.step_timing`): the
config's training step on the batches of its training dataloader, with and
without its supervisors, alternately on the same batches in one process
after ``--warmup`` batches; for both, the median step time, samples/s,
tokens/s (after splicing the image features) and peak memory (CUDA where
present, else the process RSS), and the ratios supervised/unsupervised;
then the supervised step's time by part (forward, backward) and the
optimizer step, and the training dataset's throughput in one process (one
dataloader worker's), and the unsupervised forward + backward against
transformers' ``LlavaForConditionalGeneration`` on the same weights and
batch (``--no-hf-reference`` skips it).  ``--random-init`` builds the real
architectures with random weights (no checkpoints needed): the paper's
sizes on a GPU.

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
    from dsvlm.profiling.measure import measure  # noqa: E402
    from dsvlm.profiling.meta_model import build_meta_model  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--flops', action='store_true',
                        help='count the FLOPs of one step on the meta device')
    parser.add_argument('--steps', type=int, default=20,
                        help='measured steps per variant')
    parser.add_argument('--warmup', type=int, default=3,
                        help='unmeasured steps per variant first')
    parser.add_argument('--random-init', action='store_true',
                        help='random weights instead of the checkpoints')
    parser.add_argument('--data-samples', type=int, default=200,
                        help='samples read to measure the data pipeline')
    parser.add_argument('--no-hf-reference', action='store_true',
                        help="skip the comparison with transformers' "
                        'LlavaForConditionalGeneration (a second copy of '
                        'the model)')
    parser.add_argument('--text-tokens', type=int,
                        help='text tokens per sample (default: typical of '
                        'the stage)')
    parser.add_argument('--supervised-tokens', type=int,
                        help='supervised tokens per sample')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


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


def format_measured(result, name) -> str:
    ab = result['ab']
    lines = [f'== {name}: {result["device"]}, batches of '
             f'{result["batch_size"]} samples ({result["tokens_per_batch"]:.0f}'
             f' tokens after splicing), {ab["supervised"]["steps"]} measured '
             'steps each, alternating',
             f'{"":14s} {"step (s)":>9s} {"samples/s":>10s} {"tokens/s":>10s} '
             f'{"peak memory":>12s}']
    for variant in ('unsupervised', 'supervised'):
        r = ab[variant]
        lines.append(f'{variant:14s} {r["median_step_s"]:9.4f} '
                     f'{r["samples_per_s"]:10.1f} {r["tokens_per_s"]:10.0f} '
                     f'{r["peak_memory_bytes"] / 2**20:9.0f} MiB')
    lines.append(f'supervised / unsupervised: step time '
                 f'{ab["ratio"]["step_time"]:.3f}x, peak memory '
                 f'{ab["ratio"]["peak_memory"]:.3f}x')
    parts = result['parts']
    total = sum(p['forward'] + p['backward'] for p in parts.values())
    shape = result['parts_shape']
    lines.append(f'supervised step by part ({shape["text_tokens"]} text '
                 'tokens a sample), ms:')
    lines.append(f'{"part":30s} {"forward":>9s} {"backward":>9s} '
                 f'{"share":>7s}')
    for part, t in parts.items():
        lines.append(f'{part:30s} {t["forward"] * 1e3:9.2f} '
                     f'{t["backward"] * 1e3:9.2f} '
                     f'{(t["forward"] + t["backward"]) / total:7.1%}')
    reference = result.get('transformers')
    if reference and 'skipped' in reference:
        lines.append(f'transformers reference: skipped ({reference["skipped"]})')
    elif reference:
        lines.append(
            f"unsupervised forward + backward: {reference['ours_s']:.4f} s; "
            f"transformers' LlavaForConditionalGeneration on the same "
            f"weights and batch: {reference['transformers_s']:.4f} s "
            f"(ratio {reference['ratio']:.3f}; losses "
            f"{reference['loss_ours']:.5f} and "
            f"{reference['loss_transformers']:.5f})")
    per_step = result['batch_size'] / ab['supervised']['median_step_s']
    lines.append(f'data pipeline: {result["data_samples_per_s"]:.1f} '
                 f'samples/s in one process; the supervised step takes '
                 f'{per_step:.1f} samples/s')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        cfg = load_config(args.config, args.cfg_options, launcher='none')
        if args.flops:
            result = count_flops(cfg, args.text_tokens,
                                 args.supervised_tokens)
        else:
            result = measure(cfg, args.steps, args.warmup, args.random_init,
                             args.data_samples,
                             hf_reference=not args.no_hf_reference)
    print(format_flops(result, args.config) if args.flops else
          format_measured(result, args.config))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config,
                           **{'flops' if args.flops else 'measured':
                              result}), f, indent=1)
    return result


if __name__ == '__main__':
    main()
