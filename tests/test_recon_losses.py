"""Reconstruction losses: each checked against an independent computation.

* SSIM against scikit-image's ``structural_similarity``.
* MAE and the noise MSE against numpy.
* Perceptual (LPIPS-VGG) against a re-computation written here: a
  functional VGG-16 over the raw state dict and the LPIPS formula in numpy,
  with the heads read straight from the ``lpips`` wheel; against the
  ``lpips`` package's own code run on a stand-in torchvision; and, where
  torchvision really imports, against ``lpips.LPIPS(net='vgg')``.
"""
import copy
import importlib.util
import math
import os
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from skimage.metrics import structural_similarity
from torch import nn

from dsvlm.registry import RECON_LOSSES
from dsvlm.models.recon_losses import (CombinedReconLoss, L1ReconLoss,
                                       NoisePredictionLoss,
                                       PerceptualReconLoss,
                                       RandomTrunkWarning, SSIMReconLoss,
                                       build_recon_loss)

# torchvision's vgg16().features, written out index by index:
# conv3x3 (in, out) at these indices, each followed by a ReLU; 2x2 max-pools
# at 4, 9, 16, 23, 30; LPIPS taps the ReLUs at 3, 8, 15, 22, 29.
VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128),
             10: (128, 256), 12: (256, 256), 14: (256, 256),
             17: (256, 512), 19: (512, 512), 21: (512, 512),
             24: (512, 512), 26: (512, 512), 28: (512, 512)}
VGG_POOLS = (4, 9, 16, 23, 30)
LPIPS_TAPS = (3, 8, 15, 22, 29)
SHIFT = np.array([-.030, -.088, -.188]).reshape(1, 3, 1, 1)
SCALE = np.array([.458, .448, .450]).reshape(1, 3, 1, 1)


def images(seed, shape=(2, 3, 24, 40), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 -
            1).to(dtype)


def structured_pair(shape=(2, 3, 32, 48)):
    """Smooth gradients, a disc and stripes; the prediction is a blurred,
    contrast-reduced, slightly noisy copy."""
    n, c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64),
                            indexing='ij')
    planes = [xx, (xx * yy), ((xx**2 + yy**2) < .4).double() * 2 - 1,
              torch.sin(6 * math.pi * xx) * .8]
    target = torch.stack([
        torch.stack([planes[(i + k) % 4] for k in range(c)])
        for i in range(n)])
    blurred = F.avg_pool2d(target, 3, stride=1, padding=1,
                           count_include_pad=False)
    noise = images(7, shape) * .05
    return (0.8 * blurred + noise).clamp(-1, 1), target


def skimage_ssim(pred, target, data_range):
    """Per-image SSIM by scikit-image (HWC numpy)."""
    return np.array([
        structural_similarity(
            p.permute(1, 2, 0).numpy(), t.permute(1, 2, 0).numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=data_range, channel_axis=-1)
        for p, t in zip(pred, target)])


# --- SSIM -------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['random', 'noisy_copy', 'structured'])
def test_ssim_matches_skimage(kind):
    if kind == 'random':
        pred, target = images(0), images(1)
    elif kind == 'noisy_copy':
        target = images(2)
        pred = (target + 0.3 * images(3)).clamp(-1, 1)
    else:
        pred, target = structured_pair()
    expected = 1 - skimage_ssim(pred, target, data_range=2.0).mean()

    loss = SSIMReconLoss()  # inputs in [-1, 1]: data range 2
    assert loss(pred, target).item() == pytest.approx(expected, abs=1e-9)
    # float32 inputs, as in training
    assert loss(pred.float(), target.float()).item() == pytest.approx(
        expected, abs=1e-4)

    # [0, 1] images with value_range=(0, 1) against skimage on [0, 1]
    pred01, target01 = (pred + 1) / 2, (target + 1) / 2
    expected01 = 1 - skimage_ssim(pred01, target01, data_range=1.0).mean()
    assert SSIMReconLoss(value_range=(0, 1))(pred01, target01).item() == \
        pytest.approx(expected01, abs=1e-9)


def test_ssim_identity_gradient_and_size_errors():
    target = images(4)
    pred = images(5).requires_grad_()
    loss = SSIMReconLoss()
    assert loss(target, target).item() == pytest.approx(0, abs=1e-12)
    loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0 and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match='smaller than the 11-pixel window'):
        loss(images(0, (1, 3, 10, 32)), images(1, (1, 3, 10, 32)))
    with pytest.raises(ValueError, match='target_image'):
        loss(target, None)


# --- MAE and noise ---------------------------------------------------------

def test_mae_equals_numpy_mean_abs():
    pred, target = images(0, dtype=torch.float32), images(1,
                                                          dtype=torch.float32)
    expected = np.mean(np.abs(pred.numpy() - target.numpy()))
    assert L1ReconLoss()(pred, target).item() == pytest.approx(expected,
                                                               rel=1e-6)
    assert RECON_LOSSES.build(dict(type='MAEReconLoss')).name == 'mae'


def test_noise_loss_equals_direct_mse_and_needs_no_images():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    noise_pred = torch.randn(2, 4, 8, 8, generator=g).to(torch.bfloat16)
    expected = np.mean(
        (noise_pred.float().numpy() - noise.numpy())**2)
    loss = NoisePredictionLoss()
    value = loss(noise=noise, noise_pred=noise_pred)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert not loss.needs_images and loss.needs_noise
    with pytest.raises(ValueError, match='noise_pred'):
        loss(images(0), images(1), noise=noise)


# --- perceptual (LPIPS-VGG) -------------------------------------------------

def random_vgg_state_dict(seed=0, with_classifier=True):
    """A torchvision-layout VGG-16 state dict with random weights."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in VGG_CONVS.items():
        std = math.sqrt(2 / (c_out * 9))
        state[f'features.{index}.weight'] = torch.randn(
            c_out, c_in, 3, 3, generator=g) * std
        state[f'features.{index}.bias'] = torch.randn(c_out, generator=g) * .01
    if with_classifier:  # ignored by the loss; small stand-ins
        state['classifier.0.weight'] = torch.randn(8, 8, generator=g)
        state['classifier.0.bias'] = torch.zeros(8)
    return state


def shipped_heads_file():
    spec = importlib.util.find_spec('lpips')
    return os.path.join(list(spec.submodule_search_locations)[0], 'weights',
                        'v0.1', 'vgg.pth')


def reference_vgg_sequential(state):
    """torchvision's ``vgg16().features`` as an nn.Sequential, loaded."""
    layers = []
    for index in range(31):
        if index in VGG_CONVS:
            layers.append(nn.Conv2d(*VGG_CONVS[index], 3, padding=1))
        elif index in VGG_POOLS:
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.ReLU(inplace=False))
    features = nn.Sequential(*layers)
    features.load_state_dict(
        {k[len('features.'):]: v for k, v in state.items()
         if k.startswith('features.')})
    return features


def reference_lpips(state, pred, target):
    """LPIPS v0.1 re-computed: functional VGG taps, then numpy float64."""
    heads = torch.load(shipped_heads_file(), map_location='cpu',
                       weights_only=True)
    heads = [heads[f'lin{k}.model.1.weight'].double().numpy()[0, :, 0, 0]
             for k in range(5)]

    def taps(image):
        x = (image.double().numpy() - SHIFT) / SCALE
        x = torch.from_numpy(x)
        out = []
        for index in range(30):
            if index in VGG_CONVS:
                x = F.conv2d(x, state[f'features.{index}.weight'].double(),
                             state[f'features.{index}.bias'].double(),
                             padding=1)
            elif index in VGG_POOLS:
                x = F.max_pool2d(x, 2)
            else:
                x = x.clamp(min=0)
            if index in LPIPS_TAPS:
                out.append(x.numpy())
        return out

    total = 0
    for head, a, b in zip(heads, taps(pred), taps(target)):
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        weighted = np.einsum('nchw,c->nhw', (a - b)**2, head)
        total = total + weighted.mean(axis=(1, 2))
    return total  # per image


@pytest.fixture(scope='module')
def vgg_state():
    return random_vgg_state_dict()


@pytest.fixture(scope='module')
def vgg_file(vgg_state, tmp_path_factory):
    path = tmp_path_factory.mktemp('vgg') / 'vgg16-random.pth'
    torch.save(vgg_state, path)
    return str(path)


@pytest.fixture(scope='module')
def perceptual(vgg_file):
    return PerceptualReconLoss(vgg_checkpoint=vgg_file)


def test_perceptual_matches_independent_lpips(perceptual, vgg_state,
                                              vgg_file):
    pred, target = images(10, (2, 3, 32, 32)), images(11, (2, 3, 32, 32))
    expected = reference_lpips(vgg_state, pred, target)
    loss64 = copy.deepcopy(perceptual).double()
    distance = loss64.distance(pred, target)
    assert distance.dtype == torch.float64
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-7)
    assert loss64(pred, target).item() == pytest.approx(expected.mean(),
                                                         rel=1e-7)
    # float32 (training dtype)
    assert perceptual(pred.float(), target.float()).item() == pytest.approx(
        expected.mean(), rel=1e-4)
    # [0, 1] inputs with value_range=(0, 1) give the same distance
    loss01 = PerceptualReconLoss(vgg_checkpoint=vgg_file, value_range=(0, 1))
    assert loss01((pred.float() + 1) / 2, (target.float() + 1) / 2).item() \
        == pytest.approx(expected.mean(), rel=1e-4)


def test_perceptual_heads_equal_the_shipped_lpips_file(perceptual):
    shipped = torch.load(shipped_heads_file(), map_location='cpu',
                         weights_only=True)
    assert len(shipped) == len(perceptual.heads) == 5
    for k, head in enumerate(perceptual.heads):
        assert torch.equal(head.weight, shipped[f'lin{k}.model.1.weight'])
        assert head.bias is None


def test_perceptual_properties(perceptual):
    x, y = images(20, (2, 3, 32, 32), torch.float32), images(
        21, (2, 3, 32, 32), torch.float32)
    assert perceptual(x, x).item() == 0
    d_xy, d_yx = perceptual.distance(x, y), perceptual.distance(y, x)
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)


def test_perceptual_gradient_reaches_input_not_its_weights(perceptual):
    perceptual.train()  # stays frozen and in eval mode
    assert not perceptual.training and not perceptual.trunk.training
    pred = images(30, (2, 3, 32, 32), torch.float32).requires_grad_()
    target = images(31, (2, 3, 32, 32), torch.float32)
    perceptual(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    params = list(perceptual.parameters())
    assert len(params) == 13 * 2 + 5
    assert all(not p.requires_grad and p.grad is None for p in params)


def test_vgg_checkpoint_loads_into_the_trunk(vgg_state, vgg_file):
    with warnings.catch_warnings():
        warnings.simplefilter('error', RandomTrunkWarning)
        loss = PerceptualReconLoss(vgg_checkpoint=vgg_file)
    trunk = loss.trunk.state_dict()
    features = {k: v for k, v in vgg_state.items()
                if k.startswith('features.')}
    assert set(trunk) == set(features)
    for key, value in features.items():
        assert torch.equal(trunk[key], value), key


def test_vgg_checkpoint_errors_and_random_trunk_warning(tmp_path):
    with pytest.raises(FileNotFoundError, match='vgg_checkpoint'):
        PerceptualReconLoss(vgg_checkpoint=str(tmp_path / 'missing.pth'))
    broken = random_vgg_state_dict(with_classifier=False)
    del broken['features.28.bias']
    torch.save(broken, tmp_path / 'broken.pth')
    with pytest.raises(KeyError, match='features.28.bias'):
        PerceptualReconLoss(vgg_checkpoint=str(tmp_path / 'broken.pth'))
    with pytest.warns(RandomTrunkWarning, match='NOT the real'):
        PerceptualReconLoss()


def _copy_trunk_into_lpips(model, state):
    """lpips names its trunk ``net.slice{k}.{features index}.*``."""
    for name, param in model.net.named_parameters():
        _, index, kind = name.split('.')
        param.data.copy_(state[f'features.{index}.{kind}'])


def _compare_with_lpips_module(lpips_module, perceptual, vgg_state):
    model = lpips_module.LPIPS(net='vgg', pretrained=True, pnet_rand=True,
                               verbose=False).double()
    _copy_trunk_into_lpips(model, vgg_state)
    ours = copy.deepcopy(perceptual).double()
    pred, target = images(40, (2, 3, 32, 32)), images(41, (2, 3, 32, 32))
    with torch.no_grad():
        expected = model(pred, target).flatten()
    torch.testing.assert_close(ours.distance(pred, target), expected,
                               rtol=1e-9, atol=1e-12)


@pytest.fixture
def forget_lpips(monkeypatch):
    """Import lpips afresh and drop it afterwards (restoring any earlier
    import)."""
    for name in list(sys.modules):
        if name == 'lpips' or name.startswith('lpips.'):
            monkeypatch.delitem(sys.modules, name)
    yield
    for name in list(sys.modules):
        if name == 'lpips' or name.startswith('lpips.'):
            del sys.modules[name]


def test_perceptual_matches_lpips_code_on_stand_in_torchvision(
        monkeypatch, forget_lpips, perceptual, vgg_state):
    """The lpips package's own forward, with torchvision replaced by a stub
    whose ``vgg16().features`` is the reference Sequential above."""
    models = types.ModuleType('torchvision.models')
    models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(
        features=reference_vgg_sequential(vgg_state))
    stub = types.ModuleType('torchvision')
    stub.models = models
    monkeypatch.setitem(sys.modules, 'torchvision', stub)
    monkeypatch.setitem(sys.modules, 'torchvision.models', models)
    import lpips
    _compare_with_lpips_module(lpips, perceptual, vgg_state)


def test_perceptual_matches_lpips_package(forget_lpips, perceptual,
                                          vgg_state):
    try:
        import torchvision  # noqa: F401
        import lpips
    except ImportError as error:
        pytest.skip('torchvision is not installable on this CPU-only '
                    'machine; lpips imports it at module level '
                    f'({error}). The stand-in test above runs lpips\'s code.')
    _compare_with_lpips_module(lpips, perceptual, vgg_state)


# --- combined loss and registry ---------------------------------------------

def test_combined_loss_keys_and_weights(vgg_file, vgg_state):
    pred, target = images(50, (2, 3, 32, 32)), images(51, (2, 3, 32, 32))
    g = torch.Generator().manual_seed(1)
    noise, noise_pred = torch.randn(2, 4, 4, 4, generator=g), torch.randn(
        2, 4, 4, 4, generator=g)
    combined = RECON_LOSSES.build(dict(type='CombinedReconLoss', losses=[
        dict(type='PerceptualReconLoss', vgg_checkpoint=vgg_file,
             weight=1.5),
        dict(type='SSIMReconLoss', weight=0.5),
        dict(type='L1ReconLoss', weight=2.0),
        dict(type='NoisePredictionLoss', weight=3.0),
    ])).double()
    out = combined(pred, target, noise=noise.double(),
                   noise_pred=noise_pred.double())

    expected = {
        'loss_recon_perceptual': 1.5 * reference_lpips(vgg_state, pred,
                                                       target).mean(),
        'loss_recon_ssim': 0.5 * (1 - skimage_ssim(pred, target, 2.).mean()),
        'loss_recon_mae': 2.0 * np.abs(pred.numpy() - target.numpy()).mean(),
        'loss_recon_noise': 3.0 * ((noise_pred - noise).numpy()**2).mean(),
    }
    assert set(out) == set(expected)
    assert all('recon' in key and 'loss' in key for key in out)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-6), key
    # MMEngine sums every key that contains 'loss'
    total, _ = BaseModel.parse_losses(None, out)
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-6)
    assert combined.needs_images and combined.needs_noise


def test_combined_noise_only_needs_no_images_and_build_helper():
    noise_only = build_recon_loss(dict(type='NoisePredictionLoss', weight=2))
    assert isinstance(noise_only, CombinedReconLoss)
    assert not noise_only.needs_images
    noise = torch.ones(1, 4, 2, 2)
    out = noise_only(noise=noise, noise_pred=torch.zeros_like(noise))
    assert out == {'loss_recon_noise': pytest.approx(2.0)}
    two = build_recon_loss([dict(type='SSIMReconLoss'),
                            dict(type='SSIMReconLoss', name='ssim_b')])
    assert two.log_keys == ['loss_recon_ssim', 'loss_recon_ssim_b']


def test_combined_rejects_duplicates_and_bad_weights():
    with pytest.raises(ValueError, match='distinct `name`s'):
        CombinedReconLoss([dict(type='L1ReconLoss'),
                           dict(type='MAEReconLoss')])
    with pytest.raises(ValueError, match=r'losses\[0\].weight'):
        CombinedReconLoss([dict(type='L1ReconLoss', weight=-1)])
    with pytest.raises(ValueError, match='letters, digits'):
        L1ReconLoss(name='bad key')


def test_unknown_loss_type_lists_registered_names():
    with pytest.raises(KeyError) as info:
        CombinedReconLoss([dict(type='NoSuchLoss')])
    message = str(info.value)
    assert 'NoSuchLoss' in message and 'recon_loss' in message
    for name in ('L1ReconLoss', 'SSIMReconLoss', 'PerceptualReconLoss',
                 'NoisePredictionLoss', 'CombinedReconLoss'):
        assert name in message
