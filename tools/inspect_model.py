"""Parameter counts and a per-GPU memory plan of a config's model, built
on the meta device.

    python tools/inspect_model.py configs/llava/clip_vicuna7b.py [--json]
        [--strategy deepspeed_zero3] [--gpus 8] [--nodes 1] [--gpu-mem 80]

The model is built from the architecture configs in the config file
(``architecture_only``): no weights are read, nothing is allocated, so a 13B
model takes seconds.  ``pretrained_pth`` is ignored for the same reason.
Prints total and trainable parameters of the vision encoder, the connector,
the LLM, each supervisor (and its parts: UNet, VAE, adapters, ...), and the
whole model; then the memory plan (:mod:`dsvlm.engine.memory_plan`):
parameters, gradients, optimizer state and an activation estimate per GPU
at the config's micro-batch (``train_dataloader.batch_size``) and
``max_length``, under the config's strategy or ``--strategy`` (a preset of
``configs/_base_/strategies/``), and whether it fits ``--gpu-mem`` GiB.
"""
import argparse
import contextlib
import json
import os.path as osp
import sys
from collections import OrderedDict

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# Libraries log to stdout on import (deepspeed's accelerator notice); keep
# stdout for the table or the JSON.
with contextlib.redirect_stdout(sys.stderr):
    from dsvlm.engine import memory_plan as mp  # noqa: E402
    from dsvlm.engine.config import complete_config, load_config  # noqa
    from dsvlm.engine.strategies.fsdp2 import sharding_units  # noqa: E402
    from dsvlm.engine.strategy_config import strategy_names  # noqa: E402
    from dsvlm.profiling.meta_model import build_meta_model  # noqa: E402

COMPONENTS = ('vision_encoder', 'connector', 'llm')


def _component_of(name: str, supervisor_names: dict) -> str:
    head = name.split('.', 1)[0]
    if head == 'supervisors':
        return supervisor_names[int(name.split('.')[1])]
    return head if head in COMPONENTS else 'other'


def count_parameters(model) -> 'OrderedDict[str, dict]':
    """``{component: {'total': n, 'trainable': n}}`` plus a ``'total'`` row.

    A supervisor's row also holds ``'parts'``: the same counts per child
    module (e.g. the frozen ``unet`` and the trainable ``adapters``).
    Shared (tied) parameters are counted once, as ``named_parameters`` does.
    """
    supervisors = getattr(model, 'supervisors', [])
    supervisor_names = {
        i: f'supervisors.{i} ({type(s).__name__})'
        for i, s in enumerate(supervisors)
    }
    rows = OrderedDict(
        (name, dict(total=0, trainable=0))
        for name in (*COMPONENTS, *supervisor_names.values()))
    for name, param in model.named_parameters():
        counted = [rows.setdefault(_component_of(name, supervisor_names),
                                   dict(total=0, trainable=0))]
        parts = name.split('.')
        if parts[0] == 'supervisors' and len(parts) > 3:
            counted.append(counted[0].setdefault('parts', OrderedDict())
                           .setdefault(parts[2], dict(total=0, trainable=0)))
        for row in counted:
            row['total'] += param.numel()
            if param.requires_grad:
                row['trainable'] += param.numel()
    rows['total'] = dict(
        total=sum(r['total'] for r in rows.values()),
        trainable=sum(r['trainable'] for r in rows.values()))
    return rows


def inspect_config(path: str, cfg_options=None) -> 'OrderedDict[str, dict]':
    cfg = load_config(path, cfg_options=cfg_options, launcher='none')
    return count_parameters(build_meta_model(cfg))


# ---------------------------------------------------------------- memory
def _replicated_frozen_prefixes(strategy_cfg):
    """What ZeRO-3 keeps whole (DeepSpeedZeroStrategy's
    ``replicate_frozen``): True, False or module prefixes."""
    value = (strategy_cfg or {}).get('replicate_frozen')
    if value is not None:
        return value
    try:
        from dsvlm.engine.strategies.deepspeed_zero import REPLICATED_FROZEN
    except ImportError:  # no deepspeed: its default cannot be read
        return True
    return REPLICATED_FROZEN


def _under(name, prefixes):
    return prefixes is True or any(
        name.startswith(p.rstrip('.') + '.') for p in (prefixes or ()))


def parameter_counts(model, cfg, kind) -> 'mp.ParamCounts':
    """Trainable, frozen (replicated or sharded) and gathered parameters
    of ``model`` under a strategy ``kind`` (see ``memory_plan``)."""
    strategy_cfg = cfg.get('strategy') or {}
    params = dict(model.named_parameters())  # tied weights once
    if kind == 'zero3':
        whole = _replicated_frozen_prefixes(strategy_cfg)
    elif kind == 'fsdp2':
        whole = not strategy_cfg.get('shard_frozen', False)
    else:
        whole = True
    sharded = {id(p) for n, p in params.items()
               if kind in ('zero3', 'fsdp2') and (
                   p.requires_grad or not _under(n, whole))}
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    frozen_sharded = sum(p.numel() for p in params.values()
                         if not p.requires_grad and id(p) in sharded)
    frozen = sum(p.numel() for p in params.values() if not p.requires_grad)
    gathered = 0
    if kind == 'zero3':  # DeepSpeed's largest layer, of what it partitions
        gathered = max((sum(p.numel() for p in m.parameters(recurse=False)
                            if id(p) in sharded) for m in model.modules()),
                       default=0)
    elif kind == 'fsdp2':  # the root (kept whole) + its largest block
        unit_of = {}
        units = sharding_units(model, bool(strategy_cfg.get('shard_frozen')))
        for i, unit in enumerate(units):  # nested units come later
            unit_of.update((id(p), i) for p in unit.parameters())
        sizes = [0] * (len(units) + 1)
        for p in params.values():
            if id(p) in sharded:
                sizes[unit_of.get(id(p), -1)] += p.numel()
        gathered = sizes[-1] + max(sizes[:-1], default=0)
    return mp.ParamCounts(trainable=trainable,
                          frozen_replicated=frozen - frozen_sharded,
                          frozen_sharded=frozen_sharded, gathered=gathered)


def _trains(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _checkpointing(module) -> bool:
    """Whether a transformers/diffusers model in ``module`` (a peft wrapper
    included) recomputes activations.  transformers 5 names it
    ``is_activation_checkpointing`` (the old name warns), diffusers
    ``is_gradient_checkpointing``."""
    for m in module.modules():
        for name in ('is_activation_checkpointing',
                     'is_gradient_checkpointing'):
            if hasattr(type(m), name):
                return bool(getattr(m, name))
    return False


def _f_wide_tensors(module) -> int:
    names = {n.rsplit('.', 1)[-1] for n, _ in module.named_modules()}
    if 'gate_proj' in names:
        return 4  # SwiGLU: gate, SiLU(gate), up, their product
    act = getattr(module.config, 'hidden_act', 'gelu')
    return 3 if act == 'quick_gelu' else 2


def _flash(config) -> bool:
    return getattr(config, '_attn_implementation', 'eager') != 'eager'


def activation_model(model, cfg, precision, all_checkpointed=False):
    """``batch -> {name: bytes}``: the activation estimate of ``model``
    (see ``memory_plan``); ``all_checkpointed``: the strategy checkpoints
    every transformers/diffusers model (FSDP2's activation_checkpointing).
    Also returns the notes the estimate rests on."""
    seq = cfg.get('max_length') or getattr(model, 'max_length', None) or 2048
    notes = [f'sequence {seq} tokens (max_length, image tokens included), '
             'logits at every position (upper bound)']
    llm, encoder = model.llm, model.vision_encoder
    llm_cfg = llm.config
    lora = cfg.model.llm.get('lora_cfg') or {}
    upstream = _trains(encoder) or _trains(model.connector)
    llm_model = mp.Transformer(
        hidden=llm_cfg.hidden_size, layers=llm_cfg.num_hidden_layers,
        heads=llm_cfg.num_attention_heads,
        kv_heads=getattr(llm_cfg, 'num_key_value_heads', None),
        intermediate=llm_cfg.intermediate_size,
        mlp_tensors=_f_wide_tensors(llm.model),
        rms_norm=any('RMSNorm' in type(m).__name__ for m in llm.modules()),
        flash=_flash(llm_cfg), vocab=llm_cfg.vocab_size,
        checkpointing=_checkpointing(llm.model) or all_checkpointed,
        lora_dropout=getattr(llm, 'train_mode', None) == 'lora' and
        (lora.get('lora_dropout') or 0) > 0)
    if not llm_model.checkpointing:
        notes.append('the LLM runs without gradient checkpointing')
    enc_cfg = encoder.config
    tokens = (enc_cfg.image_size // enc_cfg.patch_size)**2
    connector_tokens = tokens
    tokens += int(getattr(encoder, 'has_cls_token', False))
    enc_model = mp.Transformer(
        hidden=enc_cfg.hidden_size, layers=enc_cfg.num_hidden_layers,
        heads=enc_cfg.num_attention_heads,
        intermediate=enc_cfg.intermediate_size,
        mlp_tensors=_f_wide_tensors(encoder.tower), flash=_flash(enc_cfg),
        checkpointing=_checkpointing(encoder.tower) or all_checkpointed)
    supervisors = []
    for sup in getattr(model, 'supervisors', []):
        if not hasattr(sup, 'unet'):
            notes.append(f'{type(sup).__name__}: no activation estimate')
            continue
        loss = sup.recon_loss
        supervisors.append((sup, dict(
            image_size=sup.image_size, sampling_steps=sup.sampling_steps,
            images_loss=bool(getattr(loss, 'needs_images', True)),
            perceptual=any('Perceptual' in type(m).__name__
                           for m in loss.modules()),
            unet_checkpointing=_checkpointing(sup.unet) or all_checkpointed)))
    if supervisors:
        notes.append('diffusion supervisor: coarse, from a measurement per '
                     'image at 256 px')

    def at(batch):
        out = {}
        if _trains(llm) or upstream:
            out.update({f'llm {k}': v for k, v in mp.transformer_activations(
                llm_model, batch, seq, precision).items()})
        if _trains(encoder):
            out['vision encoder'] = sum(mp.transformer_activations(
                enc_model, batch, tokens, precision).values())
        if _trains(model.connector):  # input, GeLU input and output
            out['connector'] = batch * connector_tokens * (
                enc_cfg.hidden_size + 2 * llm_cfg.hidden_size) * \
                precision.activation
        for i, (sup, kwargs) in enumerate(supervisors):
            images = min(batch, sup.max_images or batch)
            out[f'supervisors.{i} (coarse)'] = mp.supervisor_activations(
                images, **kwargs)
        return out

    return at, notes


def strategy_label(cfg) -> str:
    """The preset name of the config's (not yet completed) strategy, or a
    description of it."""
    if cfg.get('strategy_name'):
        return cfg.strategy_name
    from dsvlm.engine.strategy_config import load_strategy_preset
    strategy = cfg.get('strategy') or None
    runner = cfg.get('runner_type', 'Runner')
    for name in strategy_names():
        preset = load_strategy_preset(name)
        same = (preset.get('strategy') or None) == strategy
        if same and preset.get('runner_type', 'Runner') == runner:
            return name
    return str(strategy['type']) if strategy else 'ddp'


def plan_memory(model, cfg, gpus=8, nodes=1, gpu_mem=80.0, name=None):
    """The memory plan of the built (meta) ``model`` under ``cfg``'s
    strategy, plus the largest micro-batch that fits."""
    strategy, precision = mp.strategy_from_config(cfg)
    counts = parameter_counts(model, cfg, strategy.kind)
    batch = cfg.train_dataloader.batch_size
    at, notes = activation_model(
        model, cfg, precision, strategy.kind == 'fsdp2' and bool(
            (cfg.get('strategy') or {}).get('activation_checkpointing')))
    plan = mp.plan(counts, strategy, precision, at(batch), gpus, nodes,
                   gpu_mem, batch=batch, name=name or strategy.kind)
    fixed = plan.model_states + plan.allowance
    best = mp.largest_batch(fixed, lambda b: sum(at(b).values()),
                            plan.gpu_mem)
    world, global_batch = gpus * nodes, cfg.get('global_batch_size')
    if global_batch and global_batch % (batch * world):
        notes.append(f'global_batch_size={global_batch} is not a multiple '
                     f'of {batch} x {world} GPUs')
    fitting = [b for b in range(best, 0, -1)
               if not global_batch or global_batch % (b * world) == 0]
    plan.notes = notes
    return plan, dict(largest_batch=best,
                      largest_batch_for_global=fitting[0] if fitting else 0,
                      counts=counts.__dict__)


def human(n: int) -> str:
    for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.2f}{unit}'
    return str(n)


def format_table(rows) -> str:
    lines = []  # (name, total, trainable); supervisor parts indented
    for name, row in rows.items():
        lines.append((name, row['total'], row['trainable']))
        for part, counts in row.get('parts', {}).items():
            lines.append((f'  .{part}', counts['total'], counts['trainable']))
    cells = [(name, *(f'{n:,} ({human(n)})' for n in counts))
             for name, *counts in lines]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    header = (f'{"component":<{widths[0]}}  {"total":>{widths[1]}}  '
              f'{"trainable":>{widths[2]}}')
    out = [header]
    for name, total, trainable in cells:
        if name == 'total':
            out.append('-' * len(header))
        out.append(f'{name:<{widths[0]}}  {total:>{widths[1]}}  '
                   f'{trainable:>{widths[2]}}')
    return '\n'.join(out)


def gib(n) -> str:
    return f'{n / mp.GiB:7.2f} GiB'


def format_plan(plan, extra) -> str:
    world = plan.gpus_per_node * plan.nodes
    lines = [f'Memory plan per GPU (an estimate): {plan.strategy} '
             f'({plan.precision}), {plan.gpus_per_node} GPU(s) x {plan.nodes}'
             f' node(s) = {world}, micro-batch {plan.batch}']
    rows = [('parameters', plan.params), ('gradients', plan.grads),
            ('optimizer state', plan.optimizer)]
    rows += [(f'activations: {k}', v) for k, v in plan.activations.items()]
    rows += [('CUDA context, buffers, fragmentation (fixed)', plan.allowance)]
    width = max(len(r[0]) for r in rows) + 2
    lines += [f'  {name:<{width}}{gib(n)}' for name, n in rows]
    verdict = 'fits' if plan.fits else 'does NOT fit'
    lines.append(f'  {"total":<{width}}{gib(plan.total)}  of '
                 f'{plan.gpu_mem / mp.GiB:g} GiB: {verdict}')
    if plan.cpu:
        lines.append(f'  {"CPU memory per node (offload)":<{width}}'
                     f'{gib(plan.cpu)}')
    lines.append(f'  largest micro-batch that fits: '
                 f'{extra["largest_batch"] or "none"} (dividing '
                 'global_batch_size over the GPUs: '
                 f'{extra["largest_batch_for_global"] or "none"})')
    lines += [f'  note: {n}' for n in plan.notes]
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parameters per component of a config\'s model, built '
        'on the meta device without weights.')
    parser.add_argument('config', help='config file')
    parser.add_argument('--json', action='store_true',
                        help='print JSON instead of a table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. '
                        'model.llm.train_mode=lora')
    parser.add_argument('--strategy', help='plan under this preset of '
                        'configs/_base_/strategies/ instead of the config\'s '
                        f'own strategy: {", ".join(strategy_names())}')
    parser.add_argument('--gpus', type=int, default=8,
                        help='GPUs per node (default 8)')
    parser.add_argument('--nodes', type=int, default=1,
                        help='nodes (default 1)')
    parser.add_argument('--gpu-mem', type=float, default=80.0,
                        help='memory of one GPU in GiB (default 80)')
    args = parser.parse_args(argv)
    if args.strategy is not None and args.strategy not in strategy_names():
        parser.error(f'--strategy {args.strategy!r} is not a preset; valid '
                     f'names: {", ".join(strategy_names())}')
    if args.gpus < 1 or args.nodes < 1 or args.gpu_mem <= 0:
        parser.error('--gpus and --nodes must be >= 1, --gpu-mem > 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        cfg = load_config(args.config, cfg_options=args.cfg_options,
                          strategy=args.strategy, complete=False)
        name = strategy_label(cfg)
        cfg = complete_config(cfg, world_size=1)
        model = build_meta_model(cfg)
        rows = count_parameters(model)
        plan, extra = plan_memory(model, cfg, args.gpus, args.nodes,
                                  args.gpu_mem, name=name)
    if args.json:
        print(json.dumps(dict(config=args.config, parameters=rows,
                              memory_plan=dict(plan.to_dict(), **extra)),
                         indent=2))
    else:
        print(args.config)
        print(format_table(rows))
        print()
        print(format_plan(plan, extra))


if __name__ == '__main__':
    main()
