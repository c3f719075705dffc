"""HFCausalLM's loss on supervised positions equals transformers' own."""
import pytest
import torch

from dsvlm.constants import IGNORE_INDEX
from dsvlm.models.llms.hf_causal_lm import HFCausalLM
from model_factory import TINY_LLAMA

TINY_QWEN2 = dict(TINY_LLAMA, model_type='qwen2')


def inputs(vocab=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(3, 9, TINY_LLAMA['hidden_size'], generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False  # right padding
    labels = torch.randint(0, vocab, (3, 9), generator=g)
    labels[:, :4] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    labels[2, 5] = IGNORE_INDEX  # a hole inside an answer
    return embeds, mask, labels


def twin_llms(config, **kw):
    torch.manual_seed(0)
    ours = HFCausalLM(config=dict(config), **kw)
    reference = HFCausalLM(config=dict(config), supervised_logits_only=False,
                           **kw)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@pytest.mark.parametrize('config', [TINY_LLAMA, TINY_QWEN2],
                         ids=['llama', 'qwen2'])
@pytest.mark.parametrize('train_mode', ['full', 'lora'])
def test_supervised_only_loss_and_grads_match_transformers(config,
                                                           train_mode):
    kw = dict(train_mode=train_mode)
    if train_mode == 'lora':
        kw['lora_cfg'] = dict(r=4, lora_alpha=8, target_modules='all-linear')
    ours, reference = twin_llms(config, **kw)
    embeds, mask, labels = inputs()
    out = ours(embeds, mask, labels=labels)
    ref = reference(embeds, mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    # logits exist only at the supervised positions (next-token targets)
    assert out.logits.shape == ((labels[:, 1:] != IGNORE_INDEX).sum(),
                                config['vocab_size'])
    out.loss.backward()
    ref.loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters()
             if p.requires_grad}
    # (the input embeddings get none: the inputs are given as embeddings)
    assert sum(g is not None for g in grads.values()) > 4
    for name, param in ours.named_parameters():
        if not param.requires_grad:
            continue
        if grads[name] is None:
            assert param.grad is None, name
        else:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4,
                                       atol=1e-6)


def test_supervised_only_loss_equals_cross_entropy_by_hand():
    ours, _ = twin_llms(TINY_LLAMA)
    embeds, mask, labels = inputs()
    logits = ours(embeds, mask).logits  # no labels: transformers' full path
    total, count = 0., 0
    for b in range(3):
        for t in range(8):
            target = labels[b, t + 1].item()
            if target != IGNORE_INDEX:
                total -= torch.log_softmax(logits[b, t], -1)[target]
                count += 1
    torch.testing.assert_close(ours(embeds, mask, labels=labels).loss,
                               total / count, rtol=1e-5, atol=1e-6)


def test_nothing_supervised_gives_a_zero_loss_with_a_graph():
    ours, _ = twin_llms(TINY_LLAMA)
    embeds, mask, labels = inputs()
    embeds.requires_grad_(True)
    loss = ours(embeds, mask, labels=torch.full_like(labels,
                                                     IGNORE_INDEX)).loss
    assert loss.item() == 0.
    loss.backward()
    assert torch.count_nonzero(embeds.grad) == 0
    # every trainable parameter takes part (with a zero gradient), as DDP
    # needs
    for name, param in ours.named_parameters():
        if param.requires_grad and 'embed_tokens' not in name:
            assert param.grad is not None and not param.grad.any(), name


def test_models_with_logit_postprocessing_are_refused():
    with pytest.raises(ValueError, match='supervised_logits_only=False'):
        HFCausalLM(config=dict(model_type='gemma2', hidden_size=32,
                               intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1,
                               head_dim=16, vocab_size=64),
                   attn_implementation='eager')


@pytest.mark.parametrize('build,key,hint', [
    (lambda cfg: HFCausalLM(config=cfg), 'num_hiden_layers',
     'num_hidden_layers'),
    (lambda cfg: HFCausalLM(config=dict(cfg, model_type='qwen2')),
     'intermediate_sise', 'intermediate_size'),
])
def test_a_misspelt_architecture_key_is_an_error(build, key, hint):
    """transformers would keep the typo as an unused attribute and build the
    default architecture."""
    with pytest.raises(ValueError, match=rf"llm\.config: unknown key.*"
                       rf"'{key}' \(did you mean '{hint}'\?\)"):
        build(dict(TINY_LLAMA, **{key: 3}))


def test_a_misspelt_vision_key_is_an_error():
    from dsvlm.models.vision_encoders.hf_vision_encoder import \
        HFVisionEncoder
    from model_factory import TINY_CLIP
    with pytest.raises(ValueError, match=r"vision_encoder\.config: unknown "
                       r"key.*'patch_sise'"):
        HFVisionEncoder(config=dict(TINY_CLIP, patch_sise=4))
    # keys transformers converts or stores under another name are fine
    llm = HFCausalLM(config=dict(TINY_LLAMA, rope_theta=5e5),
                     attn_implementation='eager')
    assert llm.config.rope_parameters['rope_theta'] == 5e5
