"""load_rgb_image: faithful 8-bit RGB, header-only limits, JPEG scan."""
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from dsvlm.datasets.image_loading import (MAX_ASPECT_RATIO, MAX_PIXELS,
                                          ImageProblem, jpeg_corruption,
                                          load_rgb_image)


def write_png(path, width, height, color_type, bit_depth, idat):
    """A PNG written by hand (PIL cannot write 16-bit RGB / grey+alpha);
    ``idat`` is the compressed payload, which may be garbage."""
    def chunk(tag, data):
        return (struct.pack('>I', len(data)) + tag + data +
                struct.pack('>I', zlib.crc32(tag + data)))
    header = struct.pack('>IIBBBBB', width, height, bit_depth, color_type,
                         0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
                     chunk(b'IDAT', idat) + chunk(b'IEND', b''))
    return path


def png_rows(samples):
    """Filter-type-0 scanlines of a big-endian uint16 (h, w, c) array."""
    rows = samples.astype('>u2').reshape(samples.shape[0], -1)
    return zlib.compress(b''.join(b'\x00' + r.tobytes() for r in rows))


def problem_of(path, **kwargs):
    with pytest.raises(ImageProblem) as info:
        load_rgb_image(path, **kwargs)
    assert str(path) in str(info.value)  # the message names the file
    return info.value


def mode_of(path):
    with Image.open(path) as image:
        return image.mode


def llava_rgb(path):
    """What LLaVA's loader gives."""
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


def assert_grey(image, expected):
    assert image.mode == 'RGB'
    rgb = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


# ----------------------------------------------------------- mode conversion
def test_16bit_grey_png_is_scaled_not_binarised(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / 'grey16.png'
    Image.fromarray(values).save(path)
    assert mode_of(path) == 'I;16'
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    image = load_rgb_image(path)
    assert_grey(image, expected.astype(np.uint8))
    assert len(np.unique(np.asarray(image))) == 256
    # what LLaVA's convert('RGB') does: everything above 255 saturates
    naive = llava_rgb(path)[..., 0]
    assert (naive == 255).mean() > 0.99


def test_16bit_big_endian_tiff(tmp_path):
    values = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    path = tmp_path / 'grey16be.tif'
    tifffile.imwrite(path, values.astype('>u2'))
    assert mode_of(path) == 'I;16B'
    expected = [(int(v) * 255 * 2 + 65535) // (2 * 65535) for v in
                values.ravel()]  # round half up, in integers
    assert_grey(load_rgb_image(path), np.reshape(expected, (8, 8)))


@pytest.mark.parametrize('values, expected', [
    # 0..99: kept as 8-bit (min-max would stretch it to 0..255)
    (np.arange(256, dtype=np.int32) % 100, np.arange(256) % 100),
    # 0..127*257: 16-bit, v/257 (min-max would stretch it)
    (np.arange(256, dtype=np.int32) % 128 * 257, np.arange(256) % 128),
    (np.arange(256, dtype=np.int32) * 1000 + 70000, np.arange(256)),
    (np.arange(256, dtype=np.int32) * 2 - 300, np.arange(256)),  # negative
])
def test_32bit_int_tiff_by_value_range(tmp_path, values, expected):
    path = tmp_path / 'int32.tif'
    tifffile.imwrite(path, values.reshape(16, 16))
    assert mode_of(path) == 'I'  # min-max rows: above 65535 or below 0
    assert_grey(load_rgb_image(path), np.reshape(expected, (16, 16)))


def test_float_tiff_in_unit_range_times_255(tmp_path):
    k = np.arange(256).reshape(16, 16)
    path = tmp_path / 'unit.tif'
    tifffile.imwrite(path, (k / 255).astype(np.float32))
    assert mode_of(path) == 'F'
    assert_grey(load_rgb_image(path), k)
    assert llava_rgb(path).max() <= 1  # black


def test_float_outside_unit_range_is_min_max_scaled(tmp_path):
    k = np.arange(256).reshape(16, 16)
    path = tmp_path / 'wide.tif'
    tifffile.imwrite(path, (k * 0.5 - 3).astype(np.float32))  # -3 .. 124.5
    assert_grey(load_rgb_image(path), k)


def test_constant_float_outside_unit_range_is_black(tmp_path):
    path = tmp_path / 'flat.tif'
    tifffile.imwrite(path, np.full((4, 4), 7.5, np.float32))
    assert_grey(load_rgb_image(path), np.zeros((4, 4)))


def test_nonfinite_float_is_unreadable(tmp_path):
    values = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    values[1, 2] = np.nan
    path = tmp_path / 'nan.tif'
    tifffile.imwrite(path, values)
    assert problem_of(path).kind == 'unreadable_image'


@pytest.mark.parametrize('color_type, channels', [(2, 3), (4, 2), (6, 4)])
def test_16bit_colour_and_alpha_pngs_keep_the_high_byte(
        tmp_path, color_type, channels):
    samples = np.random.RandomState(color_type).randint(
        0, 65536, (6, 5, channels))
    path = write_png(tmp_path / 'deep.png', 5, 6, color_type, 16,
                     png_rows(samples))
    rgb = np.asarray(load_rgb_image(path))
    colour = samples[..., :3] if channels >= 3 else samples[..., :1]
    np.testing.assert_array_equal(
        rgb, np.broadcast_to(colour // 256, (6, 5, 3)))  # not clipped


def _parity_images(tmp_path):
    rng = np.random.RandomState(0)
    rgba = rng.randint(0, 256, (12, 10, 4)).astype(np.uint8)
    rgba[0, :, 3] = 0  # fully transparent row: must not be composited
    base = Image.fromarray(rgba, 'RGBA')
    images = {
        'rgb.png': base.convert('RGB'), 'l.png': base.convert('L'),
        'p.png': base.convert('RGB').convert('P', palette=Image.ADAPTIVE),
        'rgba.png': base, 'la.png': base.convert('LA'),
        'one.png': base.convert('1'), 'cmyk.tif': base.convert('CMYK'),
        'cmyk.jpg': base.convert('CMYK'), 'rgb.jpg': base.convert('RGB'),
        'ycbcr.jpg': base.convert('L'),
    }
    transparent_p = base.convert('RGB').convert('P', palette=Image.ADAPTIVE)
    transparent_p.info['transparency'] = 0
    images['p_transparent.png'] = transparent_p
    paths = []
    for name, image in images.items():
        image.save(tmp_path / name)
        paths.append(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90; LLaVA does not apply it
    base.convert('RGB').save(tmp_path / 'exif.jpg', exif=exif)
    return paths + [tmp_path / 'exif.jpg']


def test_8bit_modes_match_llava_convert(tmp_path):
    for path in _parity_images(tmp_path):
        with Image.open(path) as original:
            expected = original.convert('RGB')
        image = load_rgb_image(path)
        assert image.mode == 'RGB' and image.size == expected.size, path
        np.testing.assert_array_equal(np.asarray(image),
                                      np.asarray(expected), err_msg=path)
    with Image.open(tmp_path / 'rgba.png') as image:
        rgba = np.asarray(image)
    np.testing.assert_array_equal(
        np.asarray(load_rgb_image(tmp_path / 'rgba.png'))[0], rgba[0, :, :3])
    assert load_rgb_image(tmp_path / 'exif.jpg').size == (10, 12)


def test_result_is_loaded_and_file_closed(tmp_path):
    path = tmp_path / 'rgb.png'
    Image.new('RGB', (4, 3), (1, 2, 3)).save(path)
    image = load_rgb_image(path)
    path.unlink()  # the returned image no longer needs the file
    assert image.getpixel((3, 2)) == (1, 2, 3)


# --------------------------------------------------------- header-only limits
def test_tall_strip_rejected_from_the_header(tmp_path):
    path = tmp_path / 'strip.png'
    Image.new('L', (1, 20000)).save(path)
    assert path.stat().st_size < 200
    start = time.perf_counter()
    assert problem_of(path).kind == 'extreme_aspect_ratio'
    assert problem_of(path, max_aspect_ratio=None).kind == 'image_too_large'
    assert time.perf_counter() - start < 1.0
    # unpadded, 20000 pixels are within budget; no limits at all pass too
    assert load_rgb_image(path, max_aspect_ratio=None,
                          padded_to_square=False).size == (1, 20000)
    assert load_rgb_image(path, max_pixels=None,
                          max_aspect_ratio=None).size == (1, 20000)


def test_limits_are_checked_before_decoding(tmp_path):
    # garbage pixel data: decoding it would give unreadable_image instead
    path = write_png(tmp_path / 'big.png', 9000, 8000, 0, 8, b'garbage')
    assert problem_of(path).kind == 'image_too_large'  # 9000**2 > 64 Mi
    small = write_png(tmp_path / 'small.png', 300, 200, 0, 8, b'garbage')
    budget = dict(max_pixels=300 * 300 - 1)
    assert problem_of(small, **budget).kind == 'image_too_large'
    assert problem_of(small, padded_to_square=False,
                      max_pixels=300 * 200 - 1).kind == 'image_too_large'
    assert problem_of(small, padded_to_square=False,
                      **budget).kind == 'unreadable_image'
    wide = write_png(tmp_path / 'wide.png', 2100, 100, 0, 8, b'garbage')
    assert problem_of(wide).kind == 'extreme_aspect_ratio'  # 21 > 20
    assert problem_of(wide, max_aspect_ratio=21).kind == 'unreadable_image'
    assert MAX_PIXELS == 64 * 2 ** 20 and MAX_ASPECT_RATIO == 20


def test_pil_decompression_bomb_becomes_image_too_large(tmp_path):
    limits = dict(max_pixels=None, max_aspect_ratio=None)
    warn = write_png(tmp_path / 'warn.png', 10000, 10000, 0, 8, b'x')
    error = write_png(tmp_path / 'error.png', 20000, 20000, 0, 8, b'x')
    assert 10000 ** 2 > Image.MAX_IMAGE_PIXELS  # PIL warns
    assert 20000 ** 2 > 2 * Image.MAX_IMAGE_PIXELS  # PIL raises
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert problem_of(warn, **limits).kind == 'image_too_large'
        assert problem_of(error, **limits).kind == 'image_too_large'
    assert caught == []  # no warning escapes


def test_unreadable_and_truncated_files(tmp_path):
    junk = tmp_path / 'junk.png'
    junk.write_bytes(b'not an image at all')
    assert problem_of(junk).kind == 'unreadable_image'
    noise = np.random.RandomState(0).randint(0, 256, (64, 64, 3))
    full = tmp_path / 'full.png'
    Image.fromarray(noise.astype(np.uint8)).save(full)
    cut = tmp_path / 'cut.png'
    cut.write_bytes(full.read_bytes()[:6000])
    assert problem_of(cut).kind == 'unreadable_image'


# ----------------------------------------------------------------- JPEG scan
def jpeg_bytes(size=128, **save_kwargs):
    rng = np.random.RandomState(size)
    blocks = rng.randint(0, 256, (size // 4, size // 4, 3)).astype(np.uint8)
    image = Image.fromarray(np.kron(blocks, np.ones((4, 4, 1), np.uint8)))
    out = io.BytesIO()
    image.save(out, 'JPEG', quality=90, **save_kwargs)
    return out.getvalue()


def scan_middle(data):
    """An offset in the middle of the longest scan, not just after a 0xFF
    (so an overwrite cannot turn stuffing 0xFF 0x00 into a marker)."""
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b'\xff\xda']
    ends = starts[1:] + [len(data)]
    start, end = max(zip(starts, ends), key=lambda se: se[1] - se[0])
    offset = (start + end) // 2
    while data[offset - 1] == 0xFF:
        offset += 1
    return offset


VALID = {
    'baseline': {},
    'progressive': {'progressive': True},
    'restart_blocks': {'restart_marker_blocks': 3},
    'restart_rows_progressive': {'restart_marker_rows': 1,
                                 'progressive': True},
    'grey': {'subsampling': 0},
}


@pytest.mark.parametrize('name', VALID)
def test_valid_jpegs_pass(tmp_path, name):
    data = jpeg_bytes(**VALID[name])
    assert data.count(b'\xff\xda') >= (2 if 'progressive' in name else 1)
    if 'restart' in name:
        assert b'\xff\xd7' in data  # restart markers cycled through RST7
    assert jpeg_corruption(data) is None
    path = tmp_path / f'{name}.jpg'
    path.write_bytes(data)
    assert load_rgb_image(path).size == (128, 128)


def test_cmyk_and_garbage_after_eoi_pass():
    out = io.BytesIO()
    Image.new('CMYK', (40, 24), (1, 2, 3, 4)).save(out, 'JPEG')
    assert jpeg_corruption(out.getvalue()) is None
    assert jpeg_corruption(jpeg_bytes() + b'trailing junk') is None


def test_long_random_overwrite_detected():
    # 1 KiB of random bytes holds a 0xFF with p = 1 - (255/256)**1024 = 98%,
    # and here each such one makes a bad marker. Seed 17 holds none: the
    # marker structure is intact, so the scan passes it (the documented blind
    # spot) unless the bytes overwrote a restart marker.
    for name in ('baseline', 'progressive', 'restart_blocks'):
        data = jpeg_bytes(size=256, **VALID[name])
        at = scan_middle(data)
        assert len(data) > at + 2048
        found = 0
        for seed in range(20):
            blob = np.random.RandomState(seed).bytes(1024)
            problem = jpeg_corruption(data[:at] + blob + data[at + 1024:])
            if b'\xff' in blob:
                assert problem is not None, (name, seed)
            found += problem is not None
        assert found == (20 if 'restart' in name else 19), name


def test_short_random_overwrite_detected_iff_it_makes_a_marker():
    data = jpeg_bytes()
    at, length = scan_middle(data), 64
    outcomes = {'blind': 0, 'bad_marker': 0}
    for seed in range(200):
        blob = np.random.RandomState(seed).bytes(length)
        problem = jpeg_corruption(data[:at] + blob + data[at + length:])
        if b'\xff' not in blob:  # the documented blind spot
            assert problem is None, seed
            outcomes['blind'] += 1
        elif any(blob[i] == 0xFF and 0x01 < blob[i + 1] < 0xC0
                 for i in range(length - 1)):
            assert problem is not None, seed  # 0xFF + reserved marker byte
            outcomes['bad_marker'] += 1
    assert outcomes['blind'] > 100 and outcomes['bad_marker'] > 10


def test_inserted_ff13_detected(tmp_path):
    for name in ('baseline', 'progressive', 'restart_blocks'):
        data = jpeg_bytes(**VALID[name])
        at = scan_middle(data)
        problem = jpeg_corruption(data[:at] + b'\xff\x13' + data[at:])
        assert problem.startswith('invalid marker 0x13'), name
    path = tmp_path / 'ff13.jpg'
    path.write_bytes(data[:at] + b'\xff\x13' + data[at:])
    assert problem_of(path).kind == 'corrupt_jpeg'


def test_restart_damage_pil_hides_is_detected(tmp_path):
    data = jpeg_bytes(restart_marker_blocks=3)
    at = scan_middle(data)
    rst = min(i for i in (data.find(bytes([0xFF, m]), at)
                          for m in range(0xD0, 0xD8)) if i > 0)
    damaged = data[:at] + data[rst + 2:]  # lost: part of an interval + RST
    assert 'instead of RST' in jpeg_corruption(damaged)
    path = tmp_path / 'lost.jpg'
    path.write_bytes(damaged)
    llava_rgb(path)  # PIL decodes it to garbage without an error
    assert problem_of(path).kind == 'corrupt_jpeg'
    assert load_rgb_image(path, check_jpeg=False).size == (128, 128)
    rst = data.find(b'\xff\xd3')
    assert 'RST3' in jpeg_corruption(data[:rst] + data[rst + 2:])
    no_dri = jpeg_bytes()
    at = scan_middle(no_dri)
    assert 'DRI' in jpeg_corruption(no_dri[:at] + b'\xff\xd0' + no_dri[at:])


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(progressive=True)
    for cut in (len(data) - 2, len(data) * 6 // 10, 400):
        assert 'premature end' in jpeg_corruption(data[:cut]), cut
    path = tmp_path / 'cut.jpg'
    path.write_bytes(data[:len(data) * 6 // 10])
    assert problem_of(path).kind == 'corrupt_jpeg'
    assert problem_of(path, check_jpeg=False).kind == 'unreadable_image'


def test_structural_errors():
    data = jpeg_bytes()
    assert 'SOI' in jpeg_corruption(b'\x89PNG' + data)
    sos = data.find(b'\xff\xda')
    garbage = data[:sos] + b'\x01\x02\x03' + data[sos:]
    assert '3 extraneous bytes before marker 0xda' in jpeg_corruption(garbage)
    assert 'before any scan' in jpeg_corruption(data[:sos] + b'\xff\xd9')
    long_app = data[:2] + b'\xff\xe1\xff\xf0' + data[2:]
    assert 'beyond the end' in jpeg_corruption(long_app)
    assert 'SOI' in jpeg_corruption(data[:sos] + b'\xff\xd8' + data[sos:])


def test_scan_is_fast_on_a_megabyte():
    y, x = np.mgrid[0:1448, 0:1448]
    noise = np.random.RandomState(0).randint(-20, 20, (1448, 1448, 3))
    pixels = np.stack([x * 255 // 1448, y * 255 // 1448, (x + y) % 256], -1)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(
        out, 'JPEG', quality=95)
    data = out.getvalue()
    assert 0.8e6 < len(data) < 2e6
    best = min(_timed(jpeg_corruption, data) for _ in range(5))
    assert best < 0.015  # ~0.8 ms measured; a per-byte loop takes > 30 ms


def _timed(function, data):
    start = time.perf_counter()
    assert function(data) is None
    return time.perf_counter() - start
