"""The real LLaVA-1.5 configs: they load, follow the recipe, and build on the
meta device with the right parameter counts.

Reference counts come from closed-form formulas over the published
architecture numbers (written out here, not read from the configs), and are
also checked against the sizes the model cards state.
"""
import glob
import json
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope

from dsvlm.engine.config import (default_work_dir, load_config,
                                 set_gradient_accumulation)
from tool_loader import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
LLAVA = osp.join(ROOT, 'configs', 'llava')
PAIRS = ('clip_vicuna7b', 'clip_vicuna13b', 'clip_llama3_8b', 'clip_qwen2_7b',
         'siglip_vicuna7b')
EXPECTED_CONFIGS = sorted(
    [f'{p}_pretrain' for p in PAIRS] + list(PAIRS) +
    ['clip_vicuna7b_lora', 'clip_vicuna7b_mgm',
     'clip_vicuna7b_mgm_pretrain'])


inspect_model = load_tool('inspect_model')


def config_path(name):
    return osp.join(LLAVA, name + '.py')


# --------------------------------------------------------------- formulas
def transformer_layer(h, inter):
    """Pre-LN ViT block: q/k/v/out with biases, 2 LayerNorms, 2-layer MLP."""
    return 4 * (h * h + h) + 2 * (2 * h) + (h * inter + inter) + (inter * h + h)


def clip_vision(h=1024, inter=4096, layers=24, image=336, patch=14):
    positions = (image // patch) ** 2 + 1  # + CLS
    embeddings = h + 3 * patch * patch * h + positions * h  # CLS, conv, pos
    return embeddings + 2 * h + layers * transformer_layer(h, inter) + 2 * h


def siglip_vision(h=1152, inter=4304, layers=27, image=384, patch=14):
    positions = (image // patch) ** 2
    embeddings = 3 * patch * patch * h + h + positions * h  # conv has a bias
    head = (h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h +
            (h * inter + inter) + (inter * h + h))  # attention-pooling head
    return embeddings + layers * transformer_layer(h, inter) + 2 * h + head


def decoder_llm(h, inter, layers, heads, kv_heads, vocab, qkv_bias=False):
    """Llama/Qwen2: untied embeddings and lm_head, RMSNorms without bias."""
    kv = kv_heads * (h // heads)
    attention = 2 * h * h + 2 * h * kv + (h + 2 * kv if qkv_bias else 0)
    layer = attention + 3 * h * inter + 2 * h
    return 2 * vocab * h + layers * layer + h


def lora_llm(h, inter, layers, heads, kv_heads, r):
    """LoRA A (r x in) and B (out x r) on q, k, v, o, gate, up, down."""
    kv = kv_heads * (h // heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter),
              (inter, h)]
    return layers * sum(r * (i + o) for i, o in shapes)


def mlp2x(in_dim, out_dim):
    return in_dim * out_dim + out_dim + out_dim * out_dim + out_dim


LLMS = dict(  # hidden, intermediate, layers, heads, kv heads, vocab
    vicuna7b=(4096, 11008, 32, 32, 32, 32000),
    vicuna13b=(5120, 13824, 40, 40, 40, 32000),
    llama3_8b=(4096, 14336, 32, 32, 8, 128256),
    qwen2_7b=(3584, 18944, 28, 28, 4, 152064),
)
ENCODERS = dict(clip=(clip_vision(), 1024), siglip=(siglip_vision(), 1152))
PUBLISHED = dict(  # model-card sizes, in parameters, and a tolerance
    vicuna7b=(6.74e9, 0.01e9), vicuna13b=(13.0e9, 0.05e9),
    llama3_8b=(8.03e9, 0.01e9), qwen2_7b=(7.6e9, 0.05e9),
    clip=(0.30e9, 0.01e9), siglip=(0.428e9, 0.002e9))


def expected_counts(name):
    """(encoder, connector, llm totals, trainable llm) for a config name."""
    pair = name.replace('_pretrain', '').replace('_lora', '').replace(
        '_mgm', '')
    encoder, llm = pair.split('_', 1)
    h, inter, layers, heads, kv_heads, vocab = LLMS[llm]
    llm_total = decoder_llm(h, inter, layers, heads, kv_heads, vocab,
                            qkv_bias=llm.startswith('qwen2'))
    encoder_total, encoder_width = ENCODERS[encoder]
    connector = mlp2x(encoder_width, h)
    if name.endswith('_pretrain'):
        llm_trainable = 0
    elif name.endswith('_lora'):
        lora = lora_llm(h, inter, layers, heads, kv_heads, r=128)
        llm_total += lora
        llm_trainable = lora
    else:
        llm_trainable = llm_total
    return encoder_total, connector, llm_total, llm_trainable


# ------------------------------------------------------------------ tests
def test_the_table1_configs_and_variants_exist():
    names = sorted(osp.basename(p)[:-3]
                   for p in glob.glob(osp.join(LLAVA, '*.py')))
    assert names == EXPECTED_CONFIGS


def test_formulas_match_published_sizes():
    """Guards the reference formulas themselves."""
    for llm, (h, inter, layers, heads, kv, vocab) in LLMS.items():
        size, tol = PUBLISHED[llm]
        n = decoder_llm(h, inter, layers, heads, kv, vocab,
                        qkv_bias=llm == 'qwen2_7b')
        assert abs(n - size) < tol, (llm, n)
    for encoder, (n, _) in ENCODERS.items():
        size, tol = PUBLISHED[encoder]
        assert abs(n - size) < tol, (encoder, n)
    assert decoder_llm(*LLMS['vicuna7b']) == 6_738_415_616  # Llama-2-7B
    assert mlp2x(1024, 4096) == 20_979_712


@pytest.mark.parametrize('name', EXPECTED_CONFIGS)
def test_config_follows_the_llava_recipe(name):
    cfg = load_config(config_path(name), launcher='none')
    stage1 = name.endswith('_pretrain')
    lora = name.endswith('_lora')
    model, loader = cfg.model, cfg.train_dataloader
    dataset = loader.dataset
    assert model.type == 'LlavaModel'
    assert model.vision_encoder.select_layer == -2
    assert model.vision_encoder.select_feature == 'patch'
    assert model.vision_encoder.train_mode == 'frozen'
    assert model.connector == dict(type='MLPConnector', depth=2, act='gelu')
    assert model.connector_train_mode == 'full'
    assert model.llm.train_mode == ('frozen' if stage1 else
                                    'lora' if lora else 'full')
    assert model.llm.gradient_checkpointing is True
    # the encoder's processor and the LLM's tokenizer read the same dirs
    assert cfg.image_processor.path == model.vision_encoder.pretrained
    assert cfg.tokenizer.path == model.llm.pretrained
    assert dataset.tokenizer == cfg.tokenizer  # filled by complete_config
    assert dataset.max_length == cfg.max_length == 2048
    # stage 1: plain captions; stage 2: the LLM's own chat template
    expected_template = dict(vicuna7b='vicuna_v1', vicuna13b='vicuna_v1',
                             llama3_8b='llama3', qwen2_7b='qwen2')
    llm_name = [k for k in expected_template if f'_{k}' in name][0]
    assert cfg.template == expected_template[llm_name]
    assert dataset.template == ('plain' if stage1 else cfg.template)
    # hyper-parameters
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW' and optimizer.weight_decay == 0
    # bf16 and accumulation as the default strategy (DeepSpeed) takes them
    assert cfg.strategy.bf16 == dict(enabled=True)
    assert cfg.strategy.zero_optimization.stage == (2 if stage1 else 3)
    lr, batch = (1e-3, 256) if stage1 else (2e-4 if lora else 2e-5, 128)
    assert optimizer.lr == lr
    assert cfg.global_batch_size == batch
    assert (cfg.strategy.gradient_accumulation_steps * loader.batch_size ==
            batch)
    assert cfg.train_cfg == dict(type='EpochBasedTrainLoop', max_epochs=1)
    assert cfg.val_dataloader is None and cfg.val_cfg is None
    mgm = '_mgm' in name
    if stage1:
        assert dataset.ann_file.endswith(
            'MGM-Pretrain/mgm_pretrain.json' if mgm else
            'blip_laion_cc_sbu_558k.json')
        assert model.pretrained_pth is None
        assert loader.sampler.type == 'DefaultSampler'
    else:
        assert dataset.image_aspect_ratio == 'pad'
        assert loader.sampler.type == 'LengthGroupedSampler'
        assert loader.sampler.batch_size == loader.batch_size
        # stage 2 starts from the stage-1 run of the same encoder + LLM (and
        # data): that config's default work_dir
        stage1_name = osp.basename(model.pretrained_pth)
        assert stage1_name in EXPECTED_CONFIGS
        assert model.pretrained_pth == default_work_dir(
            config_path(stage1_name))
        assert stage1_name == (name if mgm else name.replace(
            '_lora', '')) + '_pretrain'
    if lora:
        assert model.llm.lora_cfg == dict(
            r=128, lora_alpha=256, lora_dropout=0.05,
            target_modules='all-linear', bias='none')
        custom = cfg.optim_wrapper.paramwise_cfg.custom_keys
        assert lr * custom['connector']['lr_mult'] == pytest.approx(2e-5)
    if mgm and not stage1:
        assert dataset.ann_file.endswith('MGM-Finetune/mgm_instruction.json')


def test_global_batch_is_kept_across_process_counts():
    for world_size, counts in ((1, 8), (2, 4), (8, 1)):
        cfg = load_config(config_path('clip_vicuna7b_pretrain'),
                          launcher='none', strategy='ddp')
        set_gradient_accumulation(cfg, world_size)
        assert cfg.optim_wrapper.accumulative_counts == counts


def test_paths_follow_the_environment(monkeypatch):
    monkeypatch.setenv('DSVLM_CHECKPOINTS', '/ckpt')
    monkeypatch.setenv('DSVLM_DATA', '/datasets')
    cfg = load_config(config_path('siglip_vicuna7b'), launcher='none')
    assert cfg.model.llm.pretrained == '/ckpt/vicuna-7b-v1.5'
    assert cfg.tokenizer.path == '/ckpt/vicuna-7b-v1.5'
    assert cfg.model.vision_encoder.pretrained == \
        '/ckpt/siglip-so400m-patch14-384'
    assert cfg.image_processor.path == '/ckpt/siglip-so400m-patch14-384'
    dataset = cfg.train_dataloader.dataset
    assert dataset.ann_file == \
        '/datasets/LLaVA-Instruct/llava_v1_5_mix665k.json'
    assert dataset.image_folder == '/datasets/LLaVA-Instruct'
    monkeypatch.delenv('DSVLM_DATA')
    cfg = load_config(config_path('clip_vicuna7b_pretrain'), launcher='none',
                      cfg_options={'model.llm.pretrained': '/my/llm'})
    assert cfg.model.llm.pretrained == '/my/llm'
    assert cfg.train_dataloader.dataset.image_folder == \
        'data/LLaVA-Pretrain/images'


def test_warmup_is_3_percent_then_cosine_to_zero():
    cfg = load_config(config_path('clip_vicuna7b_pretrain'), launcher='none')
    init_default_scope('dsvlm')
    base_lr, iters = cfg.optim_wrapper.optimizer.lr, 1000
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                                lr=base_lr)
    schedulers = [
        PARAM_SCHEDULERS.build(
            dict(s), default_args=dict(optimizer=optimizer,
                                       epoch_length=iters))
        for s in cfg.param_scheduler
    ]
    lrs = []
    for _ in range(iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    # linear warm-up over the first 3% (30 of 1000 iterations) ...
    assert lrs[0] < base_lr * 0.01
    assert all(a < b for a, b in zip(lrs[:29], lrs[1:29]))
    assert lrs[28] < base_lr * 0.99
    assert lrs[29] == pytest.approx(base_lr)
    assert lrs[30] == pytest.approx(base_lr)
    # ... then cosine over the remaining 970 down to 0
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:]))
    assert lrs[515] == pytest.approx(base_lr / 2, rel=0.02)  # cosine midpoint
    assert lrs[-1] < base_lr * 1e-3


@pytest.mark.parametrize('name', EXPECTED_CONFIGS)
def test_meta_parameter_counts(name):
    start = time.perf_counter()
    rows = inspect_model.inspect_config(config_path(name))
    seconds = time.perf_counter() - start
    encoder, connector, llm, llm_trainable = expected_counts(name)
    assert rows['vision_encoder'] == dict(total=encoder, trainable=0)
    assert rows['connector'] == dict(total=connector, trainable=connector)
    assert rows['llm'] == dict(total=llm, trainable=llm_trainable)
    assert rows['total'] == dict(total=encoder + connector + llm,
                                 trainable=connector + llm_trainable)
    assert seconds < 30, f'meta build of {name} took {seconds:.1f}s'


def test_meta_build_allocates_nothing():
    cfg = load_config(config_path('clip_vicuna13b'), launcher='none')
    model = inspect_model.build_meta_model(cfg)
    devices = {p.device.type for p in model.parameters()}
    assert devices == {'meta'}


def test_count_parameters_per_supervisor_and_shared_weights():
    """Supervisors get a row each; a tied weight is counted once."""

    class Toy(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.vision_encoder = torch.nn.Linear(2, 3)  # 9
            self.connector = torch.nn.Linear(3, 4)  # 16
            self.llm = torch.nn.Module()
            self.llm.embed = torch.nn.Embedding(5, 4)  # 20
            self.llm.head = torch.nn.Linear(4, 5, bias=False)
            self.llm.head.weight = self.llm.embed.weight  # tied
            self.supervisors = torch.nn.ModuleList(
                [torch.nn.Linear(4, 1), torch.nn.Conv1d(1, 2, 3)])  # 5, 8
            self.vision_encoder.requires_grad_(False)

    rows = inspect_model.count_parameters(Toy())
    assert rows['vision_encoder'] == dict(total=9, trainable=0)
    assert rows['llm'] == dict(total=20, trainable=20)
    assert rows['supervisors.0 (Linear)'] == dict(total=5, trainable=5)
    assert rows['supervisors.1 (Conv1d)'] == dict(total=8, trainable=8)
    assert rows['total'] == dict(total=58, trainable=49)


def test_cli_json():
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'inspect_model.py'),
         config_path('clip_vicuna7b'), '--json', '--cfg-options',
         'model.llm.train_mode=frozen'],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)['parameters']  # stdout holds the JSON only
    assert rows['llm'] == dict(total=decoder_llm(*LLMS['vicuna7b']),
                               trainable=0)
    assert rows['connector']['trainable'] == mlp2x(1024, 4096)
