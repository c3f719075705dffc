"""Every rank runs the same modules on every step.

Sharded engines gather a module's parameters inside its forward, so a rank
that skipped the vision encoder or the diffusion supervisor (a text-only
batch) while another ran them would hang both (LLaVA issue #699); DDP
fails with unreduced gradients instead.  Here rank 0 only ever sees image
samples and rank 1 only text-only ones, on the tiny DS-VLM (encoder,
connector, LLM and supervisor all train):

* the 2-process run finishes under the sharded engines (FSDP2 and
  DeepSpeed ZeRO-3, which would hang otherwise), and
* ends with the weights and losses of one process that accumulates the
  same samples (global batch 4 = 1 process x 4 micro-batches = 2 processes
  x 2 micro-batches).

The supervisor draws no random numbers for a batch without images, so the
image batches get the same noise in both runs.  The learning rate is
constant: MMEngine steps schedulers per micro-batch, which differs between
the two layouts.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.registry import init_default_scope

from ports import free_port
from dsvlm.datasets.tiny.shapes import ensure_shapes_world
from dsvlm.models.checkpoint import checkpoint_format, read_state_dict
from dsvlm.registry import MODELS
from model_factory import tiny_supervisor_cfg, tiny_vlm_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
WORLD = dict(num_images_train=16, num_images_test=4, num_text_only=4,
             image_size=32)
SAMPLES = 8  # alternating image / text-only: rank 0 images, rank 1 text
GLOBAL_BATCH = 4

CONFIG = """
_base_ = ['{root}/configs/tiny/dsvlm_tiny.py']
custom_imports = dict(imports=['toy_modules'], allow_failed_imports=False)
world = dict(_delete_=True, **{world})
tokenizer = dict(_delete_=True, type='tiny_tokenizer', data_root='{data_root}',
                 **{world})
global_batch_size = {global_batch}
train_dataloader = dict(
    batch_size=1,
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='LlavaDataset',
                 ann_file='{ann_file}', image_folder='{image_folder}'))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1)
param_scheduler = None
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1000, save_last=True))
custom_hooks = [dict(type='RecordLossesHook')]
model = dict(supervisors=[dict(_base_.diffusion_supervisor, max_images=1)])
"""


# --- in one process: the modules that run ----------------------------------
def _batch(with_images):
    ids = torch.tensor([[1, 5, -200, 7, 8, 9], [1, 5, -200, 7, 8, 0]])
    if not with_images:
        ids = ids.masked_fill(ids == -200, 6)
    return dict(input_ids=ids, attention_mask=ids != 0, labels=ids.clamp(0),
                pixel_values=torch.randn(2, 3, 32, 32) if with_images
                else None,  # llava_collate's batch without any image
                has_image=torch.tensor([with_images] * 2))


def _modules_run(model, inputs):
    called = set()
    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=name: called.add(name))
        for name, m in model.named_modules()]
    try:
        losses = model(inputs, None, mode='loss')
    finally:
        for hook in hooks:
            hook.remove()
    return called, losses


def test_a_batch_without_images_runs_every_module_with_zero_weight():
    init_default_scope('dsvlm')
    torch.manual_seed(0)
    model = MODELS.build(tiny_vlm_cfg(supervisors=[tiny_supervisor_cfg()]))
    with_images, losses = _modules_run(model, _batch(True))
    sum(losses.values()).backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    state = torch.random.get_rng_state()
    text_only, losses = _modules_run(model, _batch(False))
    # the same modules, encoder and supervisor included ...
    assert text_only == with_images
    assert {'vision_encoder', 'connector', 'supervisors.0.unet',
            'supervisors.0.vae.encoder', 'supervisors.0.vae.decoder'} <= text_only
    # ... drawing no random numbers (the noise of image batches does not
    # depend on where the text-only batches fell) ...
    assert torch.equal(torch.random.get_rng_state(), state)
    # ... contributing nothing but a zero to the loss
    assert float(losses['loss_recon_mae']) == 0.0
    sum(losses.values()).backward()
    # the parameters an image batch reaches get a gradient (DDP and ZeRO
    # expect one), and it is zero outside the LLM
    assert {n for n, p in model.named_parameters()
            if p.grad is not None} == reached
    assert any(n.startswith('supervisors.0.adapters.') for n in reached)
    for name in reached:
        if not name.startswith('llm.'):
            assert not model.get_parameter(name).grad.any(), name


# --- two processes ----------------------------------------------------------
def _mixed_annotations(world_root, out_file):
    """Image and text-only samples of the tiny world, alternating."""
    with open(osp.join(world_root, 'instruct.json')) as f:
        records = json.load(f)
    images = [r for r in records if 'image' in r]
    texts = [r for r in records if 'image' not in r]
    assert len(texts) >= SAMPLES // 2
    mixed = [r for pair in zip(images, texts) for r in pair][:SAMPLES]
    with open(out_file, 'w') as f:
        json.dump(mixed, f)
    return mixed


@pytest.fixture(scope='module')
def mixed_config(tmp_path_factory):
    root = tmp_path_factory.mktemp('divergence')
    world_root = ensure_shapes_world(str(root / 'world'), **WORLD)
    ann_file = root / 'mixed.json'
    mixed = _mixed_annotations(world_root, ann_file)
    # DefaultSampler (no shuffle) gives rank r the samples r, r+2, ...
    assert all('image' in r for r in mixed[0::2])
    assert not any('image' in r for r in mixed[1::2])
    config = root / 'mixed.py'
    config.write_text(CONFIG.format(
        root=ROOT, world=WORLD, data_root=root / 'world',
        global_batch=GLOBAL_BATCH, ann_file=ann_file,
        image_folder=osp.join(world_root, 'images')))
    return root, str(config)


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, osp.join(ROOT, 'tests')])
    env['CUDA_VISIBLE_DEVICES'] = ''
    env['OMP_NUM_THREADS'] = '1'
    return env


def _run(config, work_dir, processes, iters, strategy=None):
    args = [config, '--work-dir', str(work_dir)]
    if strategy:
        args += ['--strategy', strategy]
    args += ['--cfg-options', f'train_cfg.max_iters={iters}']
    if processes == 1:
        cmd = [sys.executable, 'tools/train.py', *args]
    else:
        cmd = ['bash', 'tools/dist_train.sh', config, str(processes),
               *args[1:]]
    env = _env()
    env.update(PORT=str(free_port()), PYTHON=sys.executable)
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    losses = [json.load(open(osp.join(work_dir, f'losses_rank{r}.json')))
              for r in range(processes)]
    return read_state_dict(str(work_dir)), losses


@pytest.fixture(scope='module')
def single_process(mixed_config):
    """The one-process reference under a strategy (each engine builds its
    initial weights at another point of the random stream, so every
    strategy is compared with itself): 2 optimizer steps of 4 accumulated
    micro-batches."""
    root, config = mixed_config
    runs = {}

    def run(strategy):
        if strategy not in runs:
            runs[strategy] = _run(config, root / f'single_{strategy}', 1,
                                  iters=SAMPLES, strategy=strategy)
        return runs[strategy]

    return run


# (strategy preset, tolerance).  Both sum the same fp32 gradients in
# another order (accumulation vs all-reduce), so the weights agree to
# rounding: AdamW's first steps move each weight by about lr = 5e-4, and the
# rounding of the gradient sums changes that by far less than 1e-6.
# DDP is left out: it tolerates a skipped module (find_unused_parameters),
# and its accumulation is tested in test_train_tool.py.
STRATEGIES = [('fsdp', 1e-6), ('deepspeed_zero3', 1e-6)]


@pytest.fixture(scope='module')
def two_processes(mixed_config):
    """2 processes x 2 accumulated micro-batches x 2 optimizer steps."""
    root, config = mixed_config
    runs = {}

    def run(strategy):
        if strategy not in runs:
            runs[strategy] = _run(config, root / strategy, 2,
                                  iters=SAMPLES // 2, strategy=strategy)
        return runs[strategy]

    return run


@pytest.mark.parametrize('strategy, atol', STRATEGIES)
def test_text_only_rank_and_image_rank_train_like_one_process(
        mixed_config, single_process, two_processes, strategy, atol):
    state, (losses0, losses1) = two_processes(strategy)
    reference, (single_losses, ) = single_process(strategy)
    assert sorted(state) == sorted(reference)
    assert any(k.startswith('supervisors.0.') for k in state)
    assert any(k.startswith('vision_encoder.') for k in state)
    for key, value in reference.items():
        if key.endswith('noise.count'):  # steps per process: 4 against 8
            assert int(state[key]) * 2 == int(value) == SAMPLES, key
            continue
        torch.testing.assert_close(state[key].float(), value.float(),
                                   rtol=0, atol=atol, msg=key)
    # the same losses, sample by sample: rank 0 had samples 0, 2, 4, 6
    # (images), rank 1 samples 1, 3, 5, 7 (text only)
    interleaved = [x for pair in zip(losses0, losses1) for x in pair]
    assert interleaved == pytest.approx(single_losses, rel=1e-5)


# --- the same 2-process FSDP2 checkpoint, converted and read by stage 2 ---
def test_fsdp2_checkpoint_converts_and_starts_stage2_in_one_process(
        mixed_config, two_processes, tmp_path):
    """Sharded checkpoints become plain ones, and a stage 2 starts from a
    stage 1 that ran under another strategy and number of processes.  The
    reference is torch.distributed.checkpoint's own converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from dsvlm.engine.config import load_config
    from tool_loader import load_tool
    root, _ = mixed_config
    two_processes('fsdp')
    work_dir = root / 'fsdp'
    newest = open(work_dir / 'last_checkpoint').read().strip()
    assert checkpoint_format(newest) == 'dcp'
    assert len([f for f in os.listdir(newest) if f.endswith('.distcp')]) == 2
    dcp_to_torch_save(newest, str(tmp_path / 'whole.pt'))
    reference = torch.load(tmp_path / 'whole.pt', map_location='cpu',
                           weights_only=False)['state_dict']

    out = tmp_path / 'plain.pth'
    load_tool('convert_checkpoint').main([str(work_dir), str(out)])
    plain = torch.load(out, map_location='cpu', weights_only=False)
    assert plain['meta']['source_format'] == 'dcp'
    assert sorted(plain['state_dict']) == sorted(reference)
    for key, value in reference.items():
        assert torch.equal(plain['state_dict'][key], value), key
    load_tool('convert_checkpoint').main([str(work_dir), str(out),
                                          '--inference'])
    inference = torch.load(out, map_location='cpu', weights_only=False)
    assert not any(k.startswith('supervisors.')
                   for k in inference['state_dict'])

    # a LLaVA stage 2 (no supervisor) from the DS-VLM work_dir, 1 process
    cfg = load_config(osp.join(ROOT, 'configs/tiny/llava_tiny.py'))
    cfg.merge_from_dict(dict(model=dict(pretrained_pth=str(work_dir),
                                        tokenizer=None)))
    init_default_scope('dsvlm')
    torch.manual_seed(321)  # another initialisation than stage 1's
    stage2 = MODELS.build(cfg.model)
    for prefix in ('connector.', 'vision_encoder.'):
        names = [k for k in reference if k.startswith(prefix)]
        assert names
        for key in names:
            assert torch.equal(stage2.get_parameter(key).detach(),
                               reference[key]), key
