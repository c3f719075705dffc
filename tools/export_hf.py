"""Export a checkpoint to transformers' LLaVA format.

    python tools/export_hf.py CONFIG CHECKPOINT OUT_DIR [--dtype bfloat16]
        [--cfg-options k=v]

CHECKPOINT is a plain ``.pth``, a DeepSpeed or FSDP2 checkpoint directory,
or a work_dir (its newest checkpoint).  OUT_DIR then loads with plain
transformers, no dsvlm code::

    LlavaForConditionalGeneration.from_pretrained(OUT_DIR)
    AutoProcessor.from_pretrained(OUT_DIR)

LoRA is merged; the diffusion branch (DS-VLM's supervisors) is left out.
Frozen weights the checkpoint does not hold come from the config's
``pretrained`` directories, as in training.  OUT_DIR is written beside
itself first and renamed when complete.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from dsvlm.engine import load_config  # noqa: E402
from dsvlm.engine.config import for_inference  # noqa: E402
from dsvlm.export import export_to_dir  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a checkpoint as LlavaForConditionalGeneration')
    parser.add_argument('config', help='the config the model trained with')
    parser.add_argument('checkpoint', help='.pth, sharded checkpoint '
                        'directory or work_dir')
    parser.add_argument('out_dir', help='directory to write')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16', 'float16'),
                        help='weights dtype of the export (default: as '
                        'built, float32; the recipes train in bfloat16)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = for_inference(load_config(args.config, args.cfg_options,
                                    launcher='none'))
    if args.dtype:
        for part in ('vision_encoder', 'llm'):
            cfg.model[part]['dtype'] = args.dtype
    return export_to_dir(cfg, args.checkpoint, args.out_dir)


if __name__ == '__main__':
    main()
