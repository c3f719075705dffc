import pytest
import torch
from mmengine.registry import init_default_scope

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.registry import MODELS
from dsvlm.models.splice import splice_image_features
from model_factory import TINY_CLIP, tiny_vlm_cfg

init_default_scope('dsvlm')
NUM_PATCHES = (TINY_CLIP['image_size'] // TINY_CLIP['patch_size'])**2


def build(**kw):
    torch.manual_seed(0)
    return MODELS.build(tiny_vlm_cfg(**kw))


def batch():
    """Row 0: image after two text tokens; row 1: text-only, right-padded."""
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 8, 9],
                        [1, 5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    labels = torch.tensor([[-100, -100, -100, 7, 8, 9],
                           [-100, -100, 6, 7, -100, -100]])
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                pixel_values=torch.randn(2, 3, 32, 32),
                has_image=torch.tensor([True, False]))


def test_splice_places_features_at_the_image_token():
    table = torch.arange(20 * 3, dtype=torch.float).view(20, 3)
    embed = torch.nn.Embedding.from_pretrained(table)
    feats = -torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3) - 1
    b = batch()
    out = splice_image_features(embed, b['input_ids'], b['attention_mask'],
                                feats, b['has_image'], labels=b['labels'])
    # row 0: tokens 1, 5, then 4 feature rows, then 7, 8, 9 -> length 9
    assert out.inputs_embeds.shape == (2, 9, 3)
    assert torch.equal(out.inputs_embeds[0, :2], table[[1, 5]])
    assert torch.equal(out.inputs_embeds[0, 2:6], feats[0])
    assert torch.equal(out.inputs_embeds[0, 6:], table[[7, 8, 9]])
    assert out.labels[0].tolist() == [-100] * 6 + [7, 8, 9]
    # row 1 (text only, 4 real tokens) is right padded to 9
    assert torch.equal(out.inputs_embeds[1, :4], table[[1, 5, 6, 7]])
    assert out.attention_mask[1].tolist() == [True] * 4 + [False] * 5
    assert out.labels[1].tolist() == [-100, -100, 6, 7] + [-100] * 5
    left = splice_image_features(embed, b['input_ids'], b['attention_mask'],
                                 feats, b['has_image'], padding_side='left')
    assert left.attention_mask[1].tolist() == [False] * 5 + [True] * 4
    assert torch.equal(left.inputs_embeds[1, 5:], table[[1, 5, 6, 7]])
    assert left.labels is None


def test_splice_rejects_inconsistent_image_tokens():
    embed = torch.nn.Embedding(20, 3)
    b = batch()
    with pytest.raises(ValueError, match='sample s1 has an image but no'):
        splice_image_features(embed, b['input_ids'], b['attention_mask'],
                              torch.zeros(2, 4, 3), torch.tensor([True, True]),
                              sample_ids=['s0', 's1'])


def test_forward_backward_reaches_a_trainable_encoder():
    model = build(encoder_mode='full', llm_mode='frozen')
    losses = model(batch(), [dict(id='a'), dict(id='b')], mode='loss')
    assert set(losses) == {'loss_lm'}
    losses['loss_lm'].backward()
    tower = model.vision_encoder.tower
    # select_layer -2 of 3 layers: layers 1 and 2 (0-based 0, 1) get grads
    for layer in (0, 1):
        grads = [p.grad for n, p in tower.named_parameters()
                 if f'layers.{layer}.' in n]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    conn = [p.grad for p in model.connector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in conn)
    assert all(p.grad is None for p in model.llm.parameters())


def test_frozen_encoder_and_lora_llm_train_only_their_trainable_parts():
    model = build(encoder_mode='frozen', llm_mode='lora')
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, 'LoRA and connector must be trainable'
    assert all(n.startswith('connector.') or 'lora_' in n for n in trainable)
    assert any('lora_' in n for n in trainable)
    model(batch(), None, mode='loss')['loss_lm'].backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_encoder_lora_gets_gradients():
    model = build(encoder_mode='lora', llm_mode='frozen')
    model(batch(), None, mode='loss')['loss_lm'].backward()
    # layer index 2 lies after the selected layer -2 and gets no gradient
    lora = {n: p for n, p in model.vision_encoder.named_parameters()
            if 'lora_B' in n}
    assert len(lora) == 6
    for name, p in lora.items():
        assert (p.grad is not None) == ('layers.2.' not in name), name


def test_checkpoint_holds_trainable_weights_only_and_reloads():
    model = build(encoder_mode='frozen', llm_mode='frozen')
    state = model.state_dict()
    assert state and all(k.startswith('connector.') for k in state)
    other = build(encoder_mode='frozen', llm_mode='frozen')
    with torch.no_grad():
        for p in other.connector.parameters():
            p.zero_()
    result = other.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for a, b in zip(model.connector.parameters(),
                    other.connector.parameters()):
        assert torch.equal(a, b)


def test_pretrained_pth_loads_stage1_connector(tmp_path):
    stage1 = build(encoder_mode='frozen', llm_mode='frozen')
    with torch.no_grad():
        for p in stage1.connector.parameters():
            p.add_(1.0)
    ckpt = tmp_path / 'iter_10.pth'
    torch.save(dict(state_dict=stage1.state_dict()), ckpt)
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    stage2 = build(encoder_mode='frozen', llm_mode='full',
                   pretrained_pth=str(tmp_path))
    for a, b in zip(stage1.connector.parameters(),
                    stage2.connector.parameters()):
        assert torch.equal(a, b)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='last_checkpoint'):
        build(pretrained_pth=str(tmp_path / 'empty'))
    with pytest.raises(FileNotFoundError, match='no checkpoint at'):
        build(pretrained_pth=str(tmp_path / 'missing.pth'))


def test_tensor_mode_returns_logits_over_spliced_sequence():
    model = build()
    logits = model(batch(), None, mode='tensor')
    assert logits.shape == (2, 6 - 1 + NUM_PATCHES, 120)


def test_unknown_train_mode_names_the_key():
    with pytest.raises(ValueError, match='llm.train_mode'):
        build(llm_mode='half')


def test_tied_embeddings_are_saved_under_both_names():
    cfg = tiny_vlm_cfg(encoder_mode='frozen', llm_mode='full')
    cfg['llm']['config']['tie_word_embeddings'] = True
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    state = model.state_dict()
    assert 'llm.model.lm_head.weight' in state
    assert 'llm.model.model.embed_tokens.weight' in state
    result = MODELS.build(cfg).load_state_dict(state, strict=True)
    assert not result.missing_keys
