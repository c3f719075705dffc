"""The gradient path of DS-VLM's diffusion supervision, on tiny models."""
import pytest
import torch
from diffusers import DDPMScheduler
from mmengine.registry import init_default_scope

from dsvlm.registry import MODELS
from dsvlm.models.checkpoint import inference_state_dict
from dsvlm.models.supervisors.denoising import clean_latent_estimate
from model_factory import tiny_supervisor_cfg, tiny_vlm_cfg

init_default_scope('dsvlm')


def build(encoder_mode='full', image_processor='default', **sup):
    torch.manual_seed(0)
    cfg = tiny_vlm_cfg(encoder_mode=encoder_mode, llm_mode='frozen',
                       supervisors=[tiny_supervisor_cfg(**sup)])
    if image_processor != 'default':
        cfg['image_processor'] = image_processor
    return MODELS.build(cfg)


def batch(has_image=(True, True)):
    ids = torch.tensor([[1, 5, -200, 7, 8, 9], [1, 5, -200, 7, 8, 0]])
    return dict(input_ids=ids, attention_mask=ids != 0, labels=ids.clamp(0),
                pixel_values=torch.randn(2, 3, 32, 32),
                has_image=torch.tensor(has_image))


def recon_backward(model, inputs=None):
    losses = model(inputs or batch(), None, mode='loss')
    recon = sum(v for k, v in losses.items() if 'recon' in k)
    recon.backward()  # the language loss is left out
    return losses


def grads_of(module, pattern):
    return [p.grad for n, p in module.named_parameters() if pattern in n]


def nonzero(grads):
    return bool(grads) and all(g is not None and g.abs().sum() > 0
                               for g in grads)


def test_recon_loss_alone_reaches_connector_and_encoder():
    model = build()
    losses = recon_backward(model)
    assert 'loss_recon_mae' in losses and 'loss_lm' in losses
    assert nonzero(list(g for g in grads_of(model.connector, '')))
    tower = model.vision_encoder.tower
    for layer in (0, 1, 2):  # supervised layers 1..3 (1-based)
        assert nonzero(grads_of(tower, f'layers.{layer}.')), layer
    assert all(g is None for g in grads_of(model.llm, ''))


def test_encoder_layers_after_the_deepest_supervised_one_get_nothing():
    model = build(text_feature=False, image_layers=dict(low=1))
    recon_backward(model)
    tower = model.vision_encoder.tower
    assert nonzero(grads_of(tower, 'layers.0.'))
    assert all(g is None for g in grads_of(tower, 'layers.1.'))
    assert all(g is None for g in grads_of(tower, 'layers.2.'))
    assert all(g is None for g in grads_of(model.connector, ''))


def test_frozen_unet_and_vae_get_no_gradient_but_new_parts_do():
    model = build()
    recon_backward(model)
    sup = model.supervisors[0]
    assert all(p.grad is None for p in sup.unet.parameters())
    assert all(p.grad is None for p in sup.vae.parameters())
    assert not any(p.requires_grad for p in sup.unet.parameters())
    assert nonzero([p.grad for p in sup.adapters.parameters()])
    new_kv = [p.grad for n, p in sup.cross_attention.named_parameters()
              if 'router' not in n]
    routers = [p.grad for n, p in sup.cross_attention.named_parameters()
               if 'router' in n]
    assert nonzero(new_kv) and routers
    assert all(g is not None for g in routers)


def test_frozen_encoder_gets_nothing_connector_still_does():
    model = build(encoder_mode='frozen')
    recon_backward(model)
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    assert nonzero(grads_of(model.connector, ''))


@pytest.mark.parametrize('prediction_type', ['epsilon', 'v_prediction'])
def test_clean_latent_estimate_matches_diffusers_step(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000,
                              beta_schedule='scaled_linear',
                              beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type,
                              clip_sample=False)
    x_t, out = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in (0, 10, 500, 999):
        ref = scheduler.step(out, t, x_t).pred_original_sample
        got = clean_latent_estimate(scheduler, x_t, out, torch.tensor([t]))
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalized(images, mean, std):
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)


def test_target_image_undoes_the_image_processors_normalisation():
    """The model's image processor (tiny_vlm_cfg: OpenAI CLIP's) tells the
    supervisor what to undo; no config restates it."""
    model = build()
    sup = model.supervisors[0]
    images = torch.rand(2, 3, 32, 32)
    features = model.encode_images(normalized(images, OPENAI_MEAN,
                                              OPENAI_STD))
    assert features.image_mean == pytest.approx(OPENAI_MEAN)
    target = sup.target_images(features, torch.tensor([True, False]))
    expected = torch.nn.functional.interpolate(
        images, size=(16, 16), mode='bilinear', antialias=True) * 2 - 1
    torch.testing.assert_close(target, expected[:1], rtol=0, atol=1e-5)
    # SigLIP-style processor (mean = std = 0.5), and a supervisor override
    model = build(image_processor=dict(type='clip_image_processor',
                                       image_size=32, mean=(0.5, ) * 3,
                                       std=(0.5, ) * 3))
    features = model.encode_images(normalized(images, (0.5, ) * 3,
                                              (0.5, ) * 3))
    rows = torch.tensor([True, True])
    torch.testing.assert_close(model.supervisors[0].target_images(
        features, rows), expected, rtol=0, atol=1e-5)
    own = build(image_mean=(0.5, ) * 3, image_std=(0.5, ) * 3).supervisors[0]
    torch.testing.assert_close(own.target_images(features, rows),
                               model.supervisors[0].target_images(
                                   features, rows))


def test_unknown_normalisation_is_an_error():
    model = build(image_processor=None)
    with pytest.raises(ValueError, match='model.image_processor'):
        model(batch(), None, mode='loss')


def test_batch_without_images_gives_zero_recon_loss_touching_every_part():
    model = build()
    inputs = batch(has_image=(False, False))
    inputs['input_ids'] = inputs['input_ids'].clamp(min=0)
    losses = model(inputs, None, mode='loss')
    assert float(losses['loss_recon_mae']) == 0.0
    losses['loss_recon_mae'].backward()
    sup = model.supervisors[0]
    assert all(p.grad is not None for p in sup.parameters()
               if p.requires_grad)


def test_multi_step_training_and_trajectory():
    steps = 3
    model = build(sampling_steps=steps, timestep_range=(steps - 1, 1000))
    sup = model.supervisors[0]
    calls = []  # the timesteps of every UNet forward
    handle = sup.unet.register_forward_pre_hook(
        lambda module, args: calls.append(args[1].clone()))
    losses = recon_backward(model)
    handle.remove()
    assert torch.isfinite(losses['loss_recon_mae'])
    # N UNet passes in all (the diffusion loss's is the first DDIM step),
    # each row walking down from its own timestep with its own stride
    assert len(calls) == steps
    T = sup.scheduler.config.num_train_timesteps
    for t_i, *rest in zip(*(c.tolist() for c in calls)):
        stride = T // -(-T * (steps - 1) // t_i)
        assert rest == [t_i - k * stride for k in range(1, steps)]
    assert nonzero([p.grad for p in sup.adapters.parameters()])
    # a batch without images: its placeholder row starts at the lowest
    # timestep, N - 1 = 2, with stride 1
    calls.clear()
    handle = sup.unet.register_forward_pre_hook(
        lambda module, args: calls.append(args[1].clone()))
    inputs = batch(has_image=(False, False))
    inputs['input_ids'] = inputs['input_ids'].clamp(min=0)
    assert float(model(inputs, None, mode='loss')['loss_recon_mae']) == 0.0
    handle.remove()
    assert [c.tolist() for c in calls] == [[2], [1], [0]]
    features = model.encode_images(batch()['pixel_values'])
    snaps = sup.reconstruct(features, num_steps=6, num_snapshots=3)
    assert len(snaps) == 3 and snaps[-1].shape == (2, 3, 16, 16)
    assert not torch.equal(snaps[0], snaps[-1])


def test_checkpoint_keeps_trainable_supervisor_parts_not_sd():
    model = build()
    state = model.state_dict()
    sup_keys = [k for k in state if k.startswith('supervisors.')]
    assert any('.adapters.' in k for k in sup_keys)
    assert any('.cross_attention.' in k for k in sup_keys)
    assert not any('.unet.' in k or '.vae.' in k for k in sup_keys)
    # an inference model (no supervisors) loads a training checkpoint
    torch.manual_seed(0)
    plain = MODELS.build(tiny_vlm_cfg(encoder_mode='full', llm_mode='frozen'))
    result = plain.load_state_dict(state, strict=True)
    assert not result.unexpected_keys and not result.missing_keys
    assert set(inference_state_dict(state)) == set(plain.state_dict())


@pytest.mark.parametrize('overrides, branches', [
    (dict(text_feature=True, image_layers={}), 1),          # TS
    (dict(text_feature=False, image_layers=dict(high=3)), 1),  # IS-high
    (dict(text_feature=False, image_layers=dict(mid=2, high=3)), 2),
    (dict(text_feature=False), 3),                           # IS-all
    (dict(), 4),                                             # TS+IS-all
])
def test_table3_feature_subsets(overrides, branches):
    model = build(**overrides)
    sup = model.supervisors[0]
    assert len(sup.adapters) == branches
    recon_backward(model)
    probs = sup.router_probabilities()
    if branches > 1:
        assert probs and all(p.numel() == branches for p in probs.values())


def test_shared_cross_attention_and_qformer_adapter():
    model = build(cross_attention='shared',
                  adapter=dict(type='qformer', num_queries=4, depth=1,
                               num_heads=4))
    sup = model.supervisors[0]
    assert len(sup.cross_attention) == 0
    recon_backward(model)
    assert nonzero([p.grad for p in sup.adapters.parameters()
                    if p.requires_grad])


@pytest.mark.parametrize('overrides, message', [
    (dict(image_layers=dict(top=2)), 'unknown level'),
    (dict(image_layers=dict(high=9)), 'layers 1..3'),
    (dict(text_feature=False, image_layers={}), 'no supervision feature'),
    (dict(cross_attention='mixed'), "choose one of moe, shared"),
    (dict(adapter=dict(type='conv')), 'adapter type'),
    (dict(sampling_steps=0), r'supervisor\.sampling_steps=0 must be'),
    (dict(sampling_steps=4, timestep_range=(2, 1000)),
     r'supervisor\.timestep_range=\(2, 1000\) must start at >= 3: set '
     r'timestep_range=\(3, 1000\)'),
])
def test_bad_supervisor_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_max_images_reconstructs_only_the_first_image_rows():
    model = build(max_images=1)
    sup = model.supervisors[0]
    sup.keep_last = True
    inputs = batch()
    model(inputs, None, mode='loss')
    assert sup.last_images['target'].shape[0] == 1
    expected = sup.target_images(model.encode_images(inputs['pixel_values']),
                                 torch.tensor([True, False]))
    torch.testing.assert_close(sup.last_images['target'], expected)


def test_levels_by_name_read_the_encoders_feature_levels():
    """The tiny CLIP has 3 layers: its default levels are a third, two
    thirds and all of them; an encoder may state its own."""
    assert build(image_layers=('low', 'mid', 'high')).supervisors[
        0].image_layers == dict(low=1, mid=2, high=3)
    assert build(image_layers=('high', )).supervisors[0].image_layers == \
        dict(high=3)
    cfg = tiny_vlm_cfg(supervisors=[tiny_supervisor_cfg(
        image_layers=('low', 'high'))])
    cfg['vision_encoder']['feature_levels'] = dict(low=2, high=2)
    assert MODELS.build(cfg).supervisors[0].image_layers == dict(low=2,
                                                                 high=2)
    with pytest.raises(ValueError, match=r"level\(s\) \['mid'\] that the "
                       'encoder does not define'):
        MODELS.build(cfg | dict(supervisors=[tiny_supervisor_cfg(
            image_layers=('mid', ))]))
    with pytest.raises(ValueError, match='unknown level'):
        build(image_layers=('top', ))
    cfg['vision_encoder']['feature_levels'] = dict(low=4)
    with pytest.raises(ValueError, match=r'vision_encoder.feature_levels='
                       r".*layers 1..3"):
        MODELS.build(cfg)
