"""The FLOP split of a training step (dsvlm/profiling/step_flops.py):
closed forms for linear and convolution parts and for a Llama decoder, and
the split of a tiny DS-VLM step adding up to a real CPU step counted
whole."""
import json

import pytest
import torch
from mmengine.registry import init_default_scope
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.models.hf_build import architecture_only
from dsvlm.profiling.step_flops import (StepShape, count_parts,
                                        llava_step_flops, summarize)
from dsvlm.registry import MODELS
from tests.model_factory import (TINY_CLIP, TINY_LLAMA, tiny_supervisor_cfg,
                                 tiny_vlm_cfg)

init_default_scope('dsvlm')


@pytest.mark.parametrize('first_trains', [False, True])
def test_linear_parts_in_closed_form(first_trains):
    """y = B(A(x)): forward 2*n*in*out each; backward: a weight gradient
    (2*n*in*out) where the layer trains, an input gradient (the same) where
    something before it trains."""
    n, d_in, d_mid, d_out = 6, 8, 16, 4
    a, b = (nn.Linear(d_in, d_mid, device='meta'),
            nn.Linear(d_mid, d_out, device='meta'))
    a.requires_grad_(first_trains)
    x = torch.zeros(n, d_in, device='meta')

    def step(part):
        hidden = part('a', a)(x)
        return [part('b', lambda h: b(h).sum())(hidden)]
    flops = count_parts(step)
    fa, fb = 2 * n * d_in * d_mid, 2 * n * d_mid * d_out
    assert (flops['a'].forward, flops['b'].forward) == (fa, fb)
    assert flops['a'].backward == (fa if first_trains else 0)
    assert flops['b'].backward == (2 * fb if first_trains else fb)


def test_convolutions_under_one_name_add_up():
    first = nn.Conv2d(3, 8, kernel_size=3, padding=1, device='meta')
    second = nn.Conv2d(8, 8, kernel_size=3, padding=1, device='meta')
    x = torch.zeros(2, 3, 10, 10, device='meta')

    def step(part):
        y = part('conv', first)(x)
        return [part('conv', lambda t: second(t).sum())(y)]
    flops = count_parts(step)

    def conv(c_in):  # 2 * B * Cout * H * W * Cin * k^2
        return 2 * 2 * 8 * 10 * 10 * c_in * 3 * 3
    assert flops['conv'].forward == conv(3) + conv(8)
    # both weight gradients, and the input gradient of the second
    assert flops['conv'].backward == conv(3) + 2 * conv(8)


def _meta_model(**overrides):
    with torch.device('meta'), architecture_only():
        return MODELS.build(tiny_vlm_cfg(**overrides))


def test_the_llm_part_is_a_llama_decoder_in_closed_form():
    model = _meta_model()
    shape = StepShape(batch_size=3, text_tokens=20, supervised_tokens=7,
                      image_size=TINY_CLIP['image_size'])
    flops = llava_step_flops(model, shape)['llm'].forward
    n_image = (TINY_CLIP['image_size'] // TINY_CLIP['patch_size']) ** 2
    assert model.vision_encoder.num_tokens == n_image  # CLS dropped
    t = shape.text_tokens + n_image  # positions after splicing
    d, ff = TINY_LLAMA['hidden_size'], TINY_LLAMA['intermediate_size']
    heads, kv = (TINY_LLAMA['num_attention_heads'],
                 TINY_LLAMA['num_key_value_heads'])
    d_kv = d // heads * kv
    projections = 2 * t * d * (d + 2 * d_kv + d)  # q, k, v, o
    attention = 2 * 2 * t * t * d  # QK^T and AV over all heads
    mlp = 2 * t * 3 * d * ff  # gate, up, down
    per_sample = TINY_LLAMA['num_hidden_layers'] * (
        projections + attention + mlp)
    lm_head = 2 * shape.supervised_tokens * d * TINY_LLAMA['vocab_size']
    assert flops == shape.batch_size * (per_sample + lm_head)


def _real_batch(shape, vocab):
    """Every sample: BOS, the image, text; the last supervised_tokens
    tokens supervised."""
    ids = torch.randint(3, vocab, (shape.batch_size, shape.text_tokens + 1))
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :-shape.supervised_tokens] = IGNORE_INDEX
    return dict(input_ids=ids, labels=labels,
                attention_mask=torch.ones_like(ids, dtype=torch.bool),
                pixel_values=torch.randn(shape.batch_size, 3,
                                         shape.image_size, shape.image_size),
                has_image=torch.ones(shape.batch_size, dtype=torch.bool))


@pytest.mark.parametrize('max_images', [None, 2])
def test_the_split_adds_up_to_a_real_step_counted_whole(max_images):
    """The tiny DS-VLM's loss and backward run for real on CPU under one
    FlopCounterMode; the parts counted on meta add up to the same."""
    overrides = dict(supervisors=[tiny_supervisor_cfg(
        max_images=max_images, vae_train_mode='full')])
    shape = StepShape(batch_size=3, text_tokens=12, supervised_tokens=5,
                      image_size=TINY_CLIP['image_size'])
    torch.manual_seed(0)
    real = MODELS.build(tiny_vlm_cfg(**overrides))
    batch = _real_batch(shape, TINY_LLAMA['vocab_size'])
    with FlopCounterMode(display=False) as counter:
        sum(real.loss(batch).values()).backward()
    parts = llava_step_flops(_meta_model(**overrides), shape)
    assert sum(p.total for p in parts.values()) == counter.get_total_flops()
    assert set(parts) == {
        'vision_encoder', 'connector', 'llm', 'supervisors.0.adapters',
        'supervisors.0.vae_encode', 'supervisors.0.unet',
        'supervisors.0.vae_decode', 'supervisors.0.loss_network'}
    totals = summarize(parts)
    assert totals['overhead'] == pytest.approx(
        totals['supervision'] / totals['vlm'])
    assert parts['supervisors.0.vae_encode'].backward > 0  # trains here


def test_benchmark_tool_prints_the_split(tmp_path, capsys):
    from tests.tool_loader import load_tool
    benchmark = load_tool('benchmark')
    out = tmp_path / 'flops.json'
    result = benchmark.main(['configs/tiny/dsvlm_tiny.py', '--flops',
                             '--text-tokens', '60', '--json', str(out)])
    text = capsys.readouterr().out
    assert '32 samples (60 text tokens' in text
    for part in ('vision_encoder', 'llm', 'supervisors.0.unet',
                 'supervisors.0.vae_decode'):
        assert part in text and part in result['parts']
    assert f'FLOP overhead {result["overhead"]:+.1%}' in text
    assert result['overhead'] == pytest.approx(
        result['supervision'] / result['vlm'])
    assert json.loads(out.read_text())['flops']['shape']['text_tokens'] == 60
