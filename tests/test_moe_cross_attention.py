"""MoE cross-attention (ICA, Eq. 4-7) and shared cross-attention (SCA).

References are computed independently: a plain diffusers UNet forward, or
the equations written out with explicit matmuls and softmax.
"""
import logging
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from dsvlm.models.supervisors.moe_cross_attention import (
    MoECrossAttnProcessor, install_moe_cross_attention, router_probabilities)
from dsvlm.models.supervisors.shared_cross_attention import (
    BranchAwareAttnProcessor, install_shared_cross_attention,
    pack_branch_features)

WIDTH = 32  # cross_attention_dim of the tiny UNet
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=WIDTH, attention_head_dim=8, norm_num_groups=8,
    down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
# 1 down + 1 mid + 2 up (layers_per_block + 1) transformer blocks
TINY_ATTN2_LAYERS = 4


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET).eval()
    return unet.requires_grad_(False)


def unet_inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500][:batch])
    return x, t


def features(lengths, batch=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, WIDTH, generator=g) for n in lengths]


def randomize_routers(processors, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in processors.values():
            p.router.weight.copy_(
                torch.randn(p.router.weight.shape, generator=g))


def test_identity_with_copied_kv_and_identical_features():
    unet = tiny_unet()
    x, t = unet_inputs()
    (c,) = features([6])
    reference = unet(x, t, encoder_hidden_states=c).sample

    processors = install_moe_cross_attention(unet, num_image_branches=3)
    randomize_routers(processors)  # P is irrelevant when all branches agree
    context, kwargs = pack_branch_features([c, c, c, c])
    out = unet(x, t, encoder_hidden_states=context,
               cross_attention_kwargs=kwargs).sample
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)

    # not trivially equal: other image features change the output
    (other,) = features([6], seed=9)
    context, kwargs = pack_branch_features([c, other, other, other])
    changed = unet(x, t, encoder_hidden_states=context,
                   cross_attention_kwargs=kwargs).sample
    assert (changed - reference).abs().max() > 1e-3


def direct_moe(attn, hidden, feats, kv_weights, router_weight):
    """Eq. 5-7 by hand: per-head softmax(Q K^T / sqrt(dh)) V, router on the
    token-mean of Q, weighted sum, then to_out."""
    batch, tokens, _ = hidden.shape
    heads = attn.heads
    q = hidden @ attn.to_q.weight.T
    head_dim = q.shape[-1] // heads

    def split(x):
        return x.reshape(batch, -1, heads, head_dim).permute(0, 2, 1, 3)

    outputs = []
    for c, (w_k, w_v) in zip(feats, kv_weights):
        k, v = split(c @ w_k.T), split(c @ w_v.T)
        scores = split(q) @ k.transpose(-1, -2) / math.sqrt(head_dim)
        z = torch.softmax(scores, dim=-1) @ v
        outputs.append(z.permute(0, 2, 1, 3).reshape(batch, tokens, -1))
    if router_weight is None:
        probs = torch.ones(batch, 1)
    else:
        probs = torch.softmax(q.mean(dim=1) @ router_weight.T, dim=-1)
    mixed = sum(probs[:, j, None, None] * z for j, z in enumerate(outputs))
    return mixed @ attn.to_out[0].weight.T + attn.to_out[0].bias, probs


@pytest.mark.parametrize('num_image, text_branch',
                         [(3, True), (2, False), (1, False), (0, True)])
def test_processor_matches_equations_5_to_7(num_image, text_branch):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2,
                     dim_head=8, out_bias=True).eval()
    processor = MoECrossAttnProcessor(attn, num_image, text_branch)
    with torch.no_grad():  # new K/V no longer copies: branches must differ
        for layer in [*processor.to_k_branches, *processor.to_v_branches]:
            layer.weight.normal_()
        if processor.router is not None:
            processor.router.weight.normal_()
    attn.set_processor(processor)

    n_branches = num_image + int(text_branch)
    lengths = [5, 3, 4, 6][:n_branches]
    feats = [torch.randn(2, n, 12) for n in lengths]
    hidden = torch.randn(2, 7, 16)
    kv = [(attn.to_k.weight, attn.to_v.weight)] if text_branch else []
    kv += [(k.weight, v.weight) for k, v in
           zip(processor.to_k_branches, processor.to_v_branches)]
    router = None if processor.router is None else processor.router.weight
    expected, probs = direct_moe(attn, hidden, feats, kv, router)

    out = attn(hidden, encoder_hidden_states=torch.cat(feats, dim=1),
               branch_lengths=lengths)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(processor.last_router_probs, probs.mean(0))


def test_attention_mask_is_split_per_branch():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2,
                     dim_head=8).eval()
    processor = MoECrossAttnProcessor(attn, num_image_branches=1)
    attn.set_processor(processor)
    text, image = torch.randn(1, 4, 12), torch.randn(1, 5, 12)
    hidden = torch.randn(1, 6, 16)
    bias = torch.zeros(1, 1, 9)
    bias[..., [1, 6]] = -10000.0  # drop text token 1 and image token 2
    masked = attn(hidden, torch.cat([text, image], 1), attention_mask=bias,
                  branch_lengths=[4, 5])
    keep_text, keep_image = [0, 2, 3], [0, 1, 3, 4]
    dropped = attn(hidden, torch.cat([text[:, keep_text],
                                      image[:, keep_image]], 1),
                   branch_lengths=[3, 4])
    torch.testing.assert_close(masked, dropped, atol=1e-5, rtol=1e-5)


def test_gradients_reach_new_kv_router_and_features_not_unet():
    unet = tiny_unet()
    processors = install_moe_cross_attention(unet, num_image_branches=3)
    feats = [f.requires_grad_() for f in features([6, 5, 5, 5])]
    x, t = unet_inputs()
    context, kwargs = pack_branch_features(feats)
    out = unet(x, t, encoder_hidden_states=context,
               cross_attention_kwargs=kwargs).sample
    out.square().mean().backward()

    for name, param in processors.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for i, f in enumerate(feats):
        assert f.grad is not None and f.grad.abs().sum() > 0, i
    assert all(p.grad is None for p in unet.parameters())


def test_unet_does_not_adopt_the_processors():
    unet = tiny_unet()
    keys_before = set(unet.state_dict())
    processors = install_moe_cross_attention(unet)
    assert set(unet.state_dict()) == keys_before
    unet_ids = {id(p) for p in unet.parameters()}
    assert not unet_ids & {id(p) for p in processors.parameters()}
    unet.requires_grad_(False)  # freezing the UNet later keeps them trainable
    assert all(p.requires_grad for p in processors.parameters())


def test_router_probabilities_recorded_per_layer_and_sum_to_one():
    unet = tiny_unet()
    processors = install_moe_cross_attention(unet, num_image_branches=3)
    assert router_probabilities(processors) == {}
    randomize_routers(processors)
    x, t = unet_inputs()
    context, kwargs = pack_branch_features(features([6, 5, 5, 5]))
    unet(x, t, encoder_hidden_states=context, cross_attention_kwargs=kwargs)

    probs = router_probabilities(processors)
    assert list(probs) == list(processors)
    for name, p in probs.items():
        assert p.shape == (4,) and not p.requires_grad, name
        torch.testing.assert_close(p.sum(), torch.tensor(1.0))
        assert (p - 0.25).abs().max() > 1e-3, name  # really routed


def test_one_moe_processor_per_attn2_layer():
    unet = tiny_unet()
    processors = install_moe_cross_attention(unet)
    attn2 = [n for n, m in unet.named_modules()
             if isinstance(m, Attention) and n.endswith('attn2')]
    assert len(processors) == len(attn2) == TINY_ATTN2_LAYERS
    assert list(processors) == [n.replace('.', '_') for n in attn2]
    for name, proc in unet.attn_processors.items():
        if name.endswith('attn2.processor'):
            key = name[:-len('.processor')].replace('.', '_')
            assert proc.processor is processors[key]
        else:
            assert isinstance(proc, BranchAwareAttnProcessor), name


def test_sd15_unet_gets_16_processors_on_meta_device():
    with torch.device('meta'):  # SD-1.5 architecture, no memory used
        unet = UNet2DConditionModel(cross_attention_dim=768)
    processors = install_moe_cross_attention(unet, num_image_branches=3)
    assert len(processors) == 16
    first = next(iter(processors.values()))
    assert first.to_k_branches[0].weight.shape == (320, 768)
    assert first.router.weight.shape == (4, 320)


def test_bad_branch_lengths_are_rejected():
    unet = tiny_unet()
    install_moe_cross_attention(unet, num_image_branches=3)
    x, t = unet_inputs()
    context, kwargs = pack_branch_features(features([6, 5]))
    with pytest.raises(ValueError, match='4 branches'):
        unet(x, t, encoder_hidden_states=context,
             cross_attention_kwargs=kwargs)
    with pytest.raises(ValueError, match='pack_branch_features'):
        unet(x, t, encoder_hidden_states=context)


def test_sca_equals_plain_unet_on_concatenated_features():
    unet = tiny_unet()
    x, t = unet_inputs()
    feats = features([6, 5, 5, 5])
    reference = unet(x, t, encoder_hidden_states=torch.cat(feats, 1)).sample

    assert len(install_shared_cross_attention(unet)) == 0
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger('diffusers')
    logger.addHandler(handler)
    try:
        context, kwargs = pack_branch_features(feats)
        out = unet(x, t, encoder_hidden_states=context,
                   cross_attention_kwargs=kwargs).sample
    finally:
        logger.removeHandler(handler)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert not [w for w in warnings if 'branch_lengths' in w], warnings


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        unet = tiny_unet()
        processors = install_moe_cross_attention(unet)
        randomize_routers(processors)
        if checkpointing:  # recomputation must see branch_lengths again
            unet.enable_gradient_checkpointing()
            unet.train()
        feats = [f.requires_grad_() for f in features([6, 5, 5, 5])]
        x, t = unet_inputs()
        context, kwargs = pack_branch_features(feats)
        unet(x, t, encoder_hidden_states=context,
             cross_attention_kwargs=kwargs).sample.square().mean().backward()
        return [f.grad for f in feats] + [
            p.grad for p in processors.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True)):
        torch.testing.assert_close(checkpointed, plain)
