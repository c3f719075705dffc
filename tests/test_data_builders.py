"""Tokenizer and image-processor builders, and LLaVA's image preprocessing.

References are computed independently with numpy (padding, crop,
normalisation) and PIL's own resize.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from dsvlm.datasets.image_processing import (build_image_processor,
                                             clip_image_processor,
                                             expand2square, preprocess_image)
from dsvlm.datasets.tokenizers import build_tokenizer

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def random_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def normalize(array_hwc_uint8):
    x = (array_hwc_uint8.astype(np.float64) / 255 - MEAN) / STD
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize('width,height', [(5, 3), (3, 6), (4, 4)])
def test_expand2square_matches_numpy(width, height):
    image = random_image(width, height)
    side = max(width, height)
    expected = np.empty((side, side, 3), np.uint8)
    expected[:] = (10, 20, 30)
    top, left = (side - height) // 2, (side - width) // 2
    expected[top:top + height, left:left + width] = np.asarray(image)
    result = expand2square(image, (10, 20, 30))
    assert result.size == (side, side)
    np.testing.assert_array_equal(np.asarray(result), expected)


def test_pad_uses_processor_mean_colour_then_normalises():
    processor = clip_image_processor(image_size=8)
    image = random_image(4, 8, seed=1)  # padded to 8x8: no resize, no crop
    padded = np.empty((8, 8, 3), np.uint8)
    padded[:] = [int(m * 255) for m in MEAN]
    padded[:, 2:6] = np.asarray(image)
    out = preprocess_image(image, processor, 'pad')
    assert out.dtype == torch.float32 and out.shape == (3, 8, 8)
    np.testing.assert_allclose(out.numpy(), normalize(padded), atol=1e-5)


def test_original_aspect_ratio_centre_crops():
    processor = clip_image_processor(image_size=6)
    image = random_image(12, 6, seed=2)  # shortest edge already 6
    out = preprocess_image(image, processor, 'original')
    expected = normalize(np.asarray(image)[:, 3:9])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_resize_matches_pil_bicubic():
    processor = clip_image_processor(image_size=8)
    image = random_image(16, 16, seed=3)
    out = preprocess_image(image, processor, 'pad')
    expected = normalize(np.asarray(image.resize((8, 8), Image.BICUBIC)))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)


def test_unknown_aspect_ratio_lists_choices():
    with pytest.raises(ValueError, match="'pad', 'original'|pad, original"):
        preprocess_image(random_image(4, 4), clip_image_processor(4), 'anyres')


def test_pretrained_image_processor_from_local_dir(tmp_path):
    clip_image_processor(image_size=8).save_pretrained(tmp_path / 'proc')
    cfg = dict(type='pretrained_image_processor', path=str(tmp_path / 'proc'))
    processor = build_image_processor(cfg)
    assert build_image_processor(dict(cfg)) is processor  # cached per config
    image = random_image(8, 8, seed=4)
    np.testing.assert_allclose(preprocess_image(image, processor).numpy(),
                               normalize(np.asarray(image)), atol=1e-5)


def test_missing_pretrained_dirs_name_the_path(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_image_processor(dict(type='pretrained_image_processor',
                                   path=missing))
    with pytest.raises(FileNotFoundError, match='nowhere'):
        build_tokenizer(dict(type='pretrained_tokenizer', path=missing))


def test_pretrained_tokenizer_cached_and_padded(tmp_path, test_tokenizer):
    test_tokenizer.save_pretrained(tmp_path / 'tok')
    cfg = dict(type='pretrained_tokenizer', path=str(tmp_path / 'tok'))
    tokenizer = build_tokenizer(cfg)
    assert build_tokenizer(dict(cfg)) is tokenizer
    assert tokenizer.encode('USER: hi', add_special_tokens=False) == \
        test_tokenizer.encode('USER: hi', add_special_tokens=False)
    assert build_tokenizer(test_tokenizer) is test_tokenizer  # instance


def test_pad_token_falls_back_to_unk_then_eos(make_test_tokenizer):
    tokenizer = make_test_tokenizer()
    tokenizer.pad_token = None
    assert build_tokenizer(tokenizer).pad_token == '<unk>'
    tokenizer.pad_token, tokenizer.unk_token = None, None
    assert build_tokenizer(tokenizer).pad_token == '</s>'
