"""The memory plan (dsvlm.engine.memory_plan) and inspect_model's use of it:
DeepSpeed's own estimators agree, hand-computed bytes per strategy, and the
CLI on a real 7B recipe (built on the meta device)."""
import json
import os.path as osp

import pytest
from tool_loader import load_tool

from dsvlm.engine import memory_plan as mp
from dsvlm.engine.config import load_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'llava', 'clip_vicuna7b.py')
PRESETS = ('ddp', 'deepspeed_zero2', 'deepspeed_zero3',
           'deepspeed_zero3_offload', 'fsdp')
inspect_model = load_tool('inspect_model')

BF16 = mp.PRECISIONS['bf16']
SETUPS = [(1, 1), (8, 1), (8, 2), (6, 3)]  # (GPUs per node, nodes)


def zero2_estimate(*args, **kwargs):
    """DeepSpeed's own estimators (they need no GPU)."""
    stage2 = pytest.importorskip('deepspeed.runtime.zero.stage_1_and_2')
    return stage2.estimate_zero2_model_states_mem_needs(*args, **kwargs)


def zero3_estimate(*args, **kwargs):
    stage3 = pytest.importorskip('deepspeed.runtime.zero.stage3')
    return stage3.estimate_zero3_model_states_mem_needs(*args, **kwargs)


def states(counts, strategy, precision=BF16, gpus=8, nodes=1):
    plan = mp.plan(counts, strategy, precision, {}, gpus, nodes)
    return plan.model_states, plan.cpu


# --------------------------------------------- agreement with DeepSpeed
@pytest.mark.parametrize('gpus,nodes', SETUPS)
@pytest.mark.parametrize('offload', [False, True])
@pytest.mark.parametrize('total', [6_759_395_328, 123_456_789])
def test_zero2_equals_deepspeed(total, offload, gpus, nodes):
    cpu, gpu = zero2_estimate(
        total, gpus, nodes, cpu_offload=offload, additional_buffer_factor=1.5)
    mine = states(mp.ParamCounts(total), mp.Strategy('zero2', offload),
                  gpus=gpus, nodes=nodes)
    assert mine == (gpu, cpu if offload else 0)


@pytest.mark.parametrize('gpus,nodes', SETUPS)
@pytest.mark.parametrize('offload,offload_param', [(False, False),
                                                   (True, False),
                                                   (True, True)])
@pytest.mark.parametrize('zero_init', [True, False])
def test_zero3_equals_deepspeed(offload, offload_param, zero_init, gpus,
                                nodes):
    total, largest = 7_062_902_785, 131_072_000
    cpu, gpu, _ = zero3_estimate(
        total, largest, gpus, nodes, cpu_offload=offload,
        cpu_offload_params=offload_param, zero_init=zero_init,
        additional_buffer_factor=1.5)
    strategy = mp.Strategy('zero3', offload, offload_param, zero_init)
    mine = states(mp.ParamCounts(total, gathered=largest), strategy,
                  gpus=gpus, nodes=nodes)
    assert mine == (gpu, cpu if offload else 0)


@pytest.fixture(scope='module')
def vicuna7b():
    """clip_vicuna7b on the meta device (no weights), built once."""
    cfg = load_config(CONFIG, launcher='none')
    return inspect_model.build_meta_model(cfg)


@pytest.mark.parametrize('preset', ['deepspeed_zero3',
                                    'deepspeed_zero3_offload'])
def test_zero3_of_an_all_trainable_7b_equals_deepspeed(vicuna7b, preset):
    """The largest layer comes from the model, as DeepSpeed's
    ``model_to_params`` finds it; with everything trainable the plan's
    model states are DeepSpeed's estimate."""
    cfg = load_config(CONFIG, launcher='none', strategy=preset)
    trainable = {p: p.requires_grad for p in vicuna7b.parameters()}
    vicuna7b.requires_grad_(True)
    try:
        counts = inspect_model.parameter_counts(vicuna7b, cfg, 'zero3')
        plan, _ = inspect_model.plan_memory(vicuna7b, cfg, 8, 2)
    finally:
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    stage3 = pytest.importorskip('deepspeed.runtime.zero.stage3')
    _, largest = stage3.model_to_params(vicuna7b)  # (its total needs data)
    total = sum(p.numel() for p in vicuna7b.parameters())
    assert largest == 32000 * 4096  # embed_tokens / lm_head
    assert counts == mp.ParamCounts(total, gathered=largest)
    offload = preset.endswith('offload')
    cpu, gpu, _ = zero3_estimate(
        total, largest, 8, 2, offload, offload, True, 1.5)
    assert (plan.model_states, plan.cpu) == (gpu, cpu if offload else 0)


# --------------------------------------------- hand-computed, per strategy
T, FROZEN, GATHERED, GPUS = 1000, 600, 50, 4
COUNTS = mp.ParamCounts(T, frozen_replicated=FROZEN, gathered=GATHERED)


@pytest.mark.parametrize('strategy,precision,counts,expected', [
    # DDP, fp32 weights under autocast: 4 + 4 (+ 4 in DDP's buckets) + 8
    (mp.Strategy('ddp'), 'amp', COUNTS,
     dict(params=4 * (T + FROZEN), grads=2 * 4 * T, optimizer=8 * T)),
    (mp.Strategy('ddp'), 'fp32', COUNTS,
     dict(params=4 * (T + FROZEN), grads=2 * 4 * T, optimizer=8 * T)),
    # ZeRO-2: bf16 weights whole; (2 + 4) B grads and 12 B Adam split
    (mp.Strategy('zero2'), 'bf16', COUNTS,
     dict(params=2 * T + 2 * FROZEN, grads=6 * T / GPUS,
          optimizer=12 * T / GPUS)),
    (mp.Strategy('zero2', offload_optimizer=True), 'bf16', COUNTS,
     dict(params=2 * T + 2 * FROZEN, grads=0, optimizer=0,
          cpu=int(T * 16 * 1.5))),
    # ZeRO-3: all split (2 B weights, 4 B fp32 grads, 12 B), the largest
    # layer gathered (bf16 weight + grad)
    (mp.Strategy('zero3'), 'bf16', COUNTS,
     dict(params=2 * GATHERED + 2 * FROZEN + 2 * T / GPUS,
          grads=2 * GATHERED + 4 * T / GPUS, optimizer=12 * T / GPUS)),
    (mp.Strategy('zero3'), 'bf16',
     mp.ParamCounts(T, frozen_sharded=FROZEN, gathered=GATHERED),
     dict(params=2 * GATHERED + (2 * FROZEN + 2 * T) / GPUS,
          grads=2 * GATHERED + 4 * T / GPUS, optimizer=12 * T / GPUS)),
    (mp.Strategy('zero3', True, True), 'bf16', COUNTS,
     dict(params=2 * GATHERED + 2 * FROZEN, grads=2 * GATHERED, optimizer=0,
          cpu=int(T * 18 * 1.5))),
    # FSDP2 mixed precision: fp32 shards (4 + 4 + 8), bf16 gathered
    (mp.Strategy('fsdp2'), 'bf16-fsdp2', COUNTS,
     dict(params=2 * GATHERED + 2 * FROZEN + 4 * T / GPUS,
          grads=2 * GATHERED + 4 * T / GPUS, optimizer=8 * T / GPUS)),
    (mp.Strategy('fsdp2'), 'bf16-fsdp2',
     mp.ParamCounts(T, frozen_sharded=FROZEN, gathered=GATHERED),
     dict(params=2 * GATHERED + (2 * FROZEN + 4 * T) / GPUS,
          grads=2 * GATHERED + 4 * T / GPUS, optimizer=8 * T / GPUS)),
])
def test_bytes_per_rank_by_hand(strategy, precision, counts, expected):
    plan = mp.plan(counts, strategy, mp.PRECISIONS[precision], {}, GPUS, 1)
    got = dict(params=plan.params, grads=plan.grads,
               optimizer=plan.optimizer, cpu=plan.cpu)
    assert got == dict(dict(cpu=0), **expected)
    assert plan.model_states == int(sum(expected[k] for k in (
        'params', 'grads', 'optimizer')))


def test_activations_by_hand():
    """Checkpointed decoder: stored inputs + one layer + fp32 logits."""
    b, s, h, f, a, kv, L, V = 2, 64, 32, 88, 4, 2, 3, 100
    llm = mp.Transformer(hidden=h, layers=L, heads=a, kv_heads=kv,
                         intermediate=f, mlp_tensors=4, rms_norm=True,
                         checkpointing=True, vocab=V)
    layer = s * b * h * ((7 + 4 * kv / a) + 12 + (2 + 8 * f / h))
    assert mp.transformer_activations(llm, b, s, BF16) == {
        'layer_inputs': L * b * s * h * 2, 'recomputed_layer': layer,
        'logits': b * s * V * 4}
    # a ViT without checkpointing and without SDPA: every layer, with the
    # 5·a·s² softmax term; Korthikanti's 34 - dropout for a GeLU 4h MLP
    vit = mp.Transformer(hidden=h, layers=L, heads=a, intermediate=4 * h,
                         flash=False)
    assert mp.transformer_activations(vit, b, s, BF16) == {
        'layers': L * s * b * h * (33 + 5 * a * s / h)}


def test_supervisor_scales_with_images_area_and_steps():
    one = mp.supervisor_activations(1)
    assert mp.supervisor_activations(4) == 4 * one
    assert mp.supervisor_activations(1, image_size=512) == 4 * one
    unet = mp.SUPERVISOR_MIB_PER_IMAGE['unet'] * mp.MiB
    assert mp.supervisor_activations(1, sampling_steps=3) == one + 2 * unet


# --------------------------------------------- inspect_model on a 7B recipe
def test_cli_zero3_fits_8x80(capsys):
    inspect_model.main([CONFIG, '--strategy', 'deepspeed_zero3', '--gpus',
                        '8', '--gpu-mem', '80'])
    out = capsys.readouterr().out
    assert 'llm  ' in out  # the parameter table is still there
    plan = out[out.index('Memory plan per GPU (an estimate)'):]
    assert 'deepspeed_zero3 (bf16), 8 GPU(s) x 1 node(s)' in plan
    assert 'of 80 GiB: fits' in plan


def test_ddp_does_not_fit_8x80(capsys):
    inspect_model.main([CONFIG, '--strategy', 'ddp', '--gpus', '8',
                        '--gpu-mem', '80', '--json'])
    out = json.loads(capsys.readouterr().out)
    plan = out['memory_plan']
    assert out['parameters']['llm']['trainable'] > 6.7e9
    assert plan['strategy'] == 'ddp' and plan['fits'] is False
    assert plan['model_states'] > 100e9  # 16 B x 6.76B trainable, at least
    assert plan['largest_batch'] == 0


@pytest.mark.parametrize('preset', ['deepspeed_zero2', 'deepspeed_zero3',
                                    'deepspeed_zero3_offload', 'fsdp'])
def test_two_nodes_halve_the_partitioned_parts(vicuna7b, preset):
    cfg = load_config(CONFIG, launcher='none', strategy=preset)
    strategy, precision = mp.strategy_from_config(cfg)
    counts = inspect_model.parameter_counts(vicuna7b, cfg, strategy.kind)
    one, _ = inspect_model.plan_memory(vicuna7b, cfg, 8, 1)
    two, _ = inspect_model.plan_memory(vicuna7b, cfg, 8, 2)
    shares = mp.model_states(counts, strategy, precision, 8, 1)
    for key in ('params', 'grads', 'optimizer'):
        whole = shares[key].replicated
        assert getattr(two, key) - whole == pytest.approx(
            (getattr(one, key) - whole) / 2, rel=1e-12)
    assert one.activations == two.activations
    if strategy.offload_optimizer:  # offloaded: each node holds half
        assert one.model_states == two.model_states
        assert two.cpu == pytest.approx(one.cpu / 2, rel=1e-12)
    else:
        assert shares['grads'].sharded > 0 and shares['optimizer'].sharded
        assert two.model_states < one.model_states


def test_lora_recipe_keeps_checkpointing_and_partitions_the_frozen_llm():
    """Under peft the LLM still recomputes its layers; ZeRO-3 partitions the
    frozen base LLM but keeps the frozen encoder whole."""
    cfg = load_config(osp.join(ROOT, 'configs', 'llava',
                               'clip_vicuna7b_lora.py'), launcher='none')
    model = inspect_model.build_meta_model(cfg)
    plan, _ = inspect_model.plan_memory(model, cfg, 8, 1)
    assert plan.strategy == 'zero3' and plan.fits
    assert {'llm layer_inputs', 'llm recomputed_layer'} <= set(
        plan.activations)
    counts = inspect_model.parameter_counts(model, cfg, 'zero3')
    rows = inspect_model.count_parameters(model)
    assert counts.frozen_replicated == rows['vision_encoder']['total']
    assert counts.frozen_sharded == (rows['llm']['total'] -
                                     rows['llm']['trainable'])


def test_unknown_strategy_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        inspect_model.parse_args([CONFIG, '--strategy', 'zero9'])
    err = capsys.readouterr().err
    assert "'zero9'" in err
    for name in PRESETS:
        assert name in err


def test_config_strategy_is_the_default():
    """Without --strategy the config's own strategy is planned, named by
    its preset."""
    cfg = load_config(CONFIG, launcher='none', complete=False)
    assert inspect_model.strategy_label(cfg) == 'deepspeed_zero3'
    cfg = load_config(CONFIG, launcher='none', complete=False,
                      strategy='fsdp')
    assert inspect_model.strategy_label(cfg) == 'fsdp'
