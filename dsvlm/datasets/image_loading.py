"""Load a training image as 8-bit RGB without silently damaging it.

LLaVA's ``Image.open(path).convert('RGB')`` binarises 16-bit greyscale,
blackens float images, decodes any header size and hides libjpeg's "Corrupt
JPEG data" warnings; :func:`load_rgb_image` rescales or rejects those cases
and otherwise returns exactly what LLaVA's loader returns.
"""
import os
import warnings
from typing import Optional, Union

import numpy as np
from PIL import Image

#: Default pixel budget, on the padded square when ``padded_to_square``:
#: 64 Mi pixels = an 8192x8192 square, ~200 MB as uint8 RGB (the copy
#: LLaVA's expand2square makes before resizing). Photos with a long side up
#: to 8192 px (45 MP at 3:2) pass; larger ones are scans, panoramas and
#: hostile headers whose detail a 336-px encoder cannot use anyway.
MAX_PIXELS = 64 * 2 ** 20
#: Default longest/shortest side ratio. Padded to a square and resized to
#: 336 px, a 20:1 image keeps a 17-px-wide strip of content; beyond that
#: there is nothing left to see. Panoramas (4:1) and receipts (~8:1) pass.
MAX_ASPECT_RATIO = 20.0

_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N')
_JPEG_FORMATS = ('JPEG', 'MPO')  # MPO: camera files, a JPEG first frame


class ImageProblem(ValueError):
    """An unusable image; ``kind``: 'unreadable_image', 'image_too_large',
    'extreme_aspect_ratio' or 'corrupt_jpeg'. The message names the file."""

    def __init__(self, kind: str, path, message: str):
        self.kind = kind
        self.path = os.fspath(path)
        self.message = f'{self.path}: {message}'  # without the kind
        super().__init__(f'[{kind}] {self.message}')


def load_rgb_image(path: Union[str, os.PathLike],
                   max_pixels: Optional[int] = MAX_PIXELS,
                   max_aspect_ratio: Optional[float] = MAX_ASPECT_RATIO,
                   padded_to_square: bool = True,
                   check_jpeg: bool = True) -> Image.Image:
    """The image at ``path`` as a fully loaded 'RGB' image (file closed);
    :class:`ImageProblem` when it cannot be used.

    Limits are checked on the header, before decoding: ``max_pixels``
    bounds ``w*h``, or ``max(w, h)**2`` if ``padded_to_square`` (LLaVA pads
    to a square before resizing: that is the memory paid);
    ``max_aspect_ratio`` bounds ``max(w, h)/min(w, h)``; ``None`` disables
    a limit. PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``,
    left as it is) gives ``image_too_large`` too, never a warning.

    'RGB', 'L', 'P', 'RGBA', 'LA', 'CMYK', '1', ... go through
    ``convert('RGB')`` exactly as in LLaVA (parity with the official code):
    alpha is dropped, not composited; EXIF orientation is NOT applied.
    Modes PIL would clip to 0..255 are rescaled:

    * 'I;16', 'I;16B', 'I;16L', 'I;16N': ``round(v * 255 / 65535)``.
    * 'I' (32-bit int; PIL uses it for int16/int32/uint32 TIFFs) is judged
      by its values: all in 0..255 -> kept as 8-bit; all in 0..65535 ->
      scaled as 16-bit; otherwise min-max scaled to 0..255.
    * 'F' (float): all values in [0, 1] -> ``round(v * 255)``; otherwise
      min-max scaled to 0..255. A NaN or infinity raises
      ``unreadable_image``: there is no faithful 8-bit value for it.
    * A constant image that needs min-max scaling becomes all 0.

    Grey is replicated to three channels. 16-bit RGB, RGBA and grey+alpha
    PNGs need nothing: Pillow 13 opens them as 'RGB'/'RGBA' keeping each
    sample's high byte (``v >> 8``, not clipped).

    ``check_jpeg`` runs :func:`jpeg_corruption` on JPEG files before
    decoding (``corrupt_jpeg``). A file PIL cannot identify or decode
    (e.g. truncated) gives ``unreadable_image``;
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as it is.
    """
    try:
        # Header only (Image.open is lazy). Its bomb check warns above
        # MAX_IMAGE_PIXELS, raises above twice that: make both errors. (The
        # filter is process-wide while it lasts; harmless here.)
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise ImageProblem('image_too_large', path, str(e)) from e
    except Exception as e:  # PIL raises many types for unreadable files
        raise ImageProblem('unreadable_image', path, f'cannot open image: '
                           f'{type(e).__name__}: {e}') from e
    with image:
        _check_size(path, image.size, max_pixels, max_aspect_ratio,
                    padded_to_square)
        if check_jpeg and image.format in _JPEG_FORMATS:
            with open(path, 'rb') as f:
                problem = jpeg_corruption(f.read())
            if problem is not None:
                raise ImageProblem('corrupt_jpeg', path, problem)
        try:
            image.load()
        except Exception as e:
            raise ImageProblem('unreadable_image', path, f'cannot decode '
                               f'image: {type(e).__name__}: {e}') from e
        return _to_rgb(image, path)


def _check_size(path, size, max_pixels, max_aspect_ratio, padded_to_square):
    width, height = size
    if min(width, height) <= 0:
        raise ImageProblem('unreadable_image', path,
                           f'image has no pixels ({width}x{height})')
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        raise ImageProblem('extreme_aspect_ratio', path,
                           f'{width}x{height}: aspect ratio {ratio:.1f} > '
                           f'max_aspect_ratio={max_aspect_ratio}')
    pixels = max(width, height) ** 2 if padded_to_square else width * height
    if max_pixels is not None and pixels > max_pixels:
        what = ' padded to a square' if padded_to_square else ''
        raise ImageProblem('image_too_large', path,
                           f'{width}x{height}{what}: {pixels} pixels > '
                           f'max_pixels={max_pixels}')


def _to_rgb(image: Image.Image, path) -> Image.Image:
    if image.mode not in _SIXTEEN_BIT_MODES + ('I', 'F'):
        return image.convert('RGB')
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = _scale_16bit(values)
    elif image.mode == 'I':
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 255:
            grey = values.astype(np.uint8)
        elif low >= 0 and high <= 65535:
            grey = _scale_16bit(values)
        else:
            grey = _min_max(values.astype(np.float64), low, high)
    else:  # 'F'
        if not np.isfinite(values).all():
            raise ImageProblem('unreadable_image', path,
                               'float image has NaN or infinite pixels')
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            grey = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
        else:
            grey = _min_max(values.astype(np.float64), low, high)
    return Image.fromarray(grey, 'L').convert('RGB')


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    # Integer rounding of v*255/65535 = v/257: no ties, as 257 is odd.
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _min_max(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


# Markers without a length field (ITU T.81 B.1.1.3): TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xDA)}
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def jpeg_corruption(data: bytes) -> Optional[str]:
    """What is structurally wrong with the JPEG ``data``, or None.

    Walks the marker segments from SOI (each length checked against the
    file) and, after every SOS (a progressive file has several, with DHT
    and the like between them), the entropy-coded data, where a 0xFF byte
    may only be stuffing (0xFF 0x00), fill (more 0xFF), a restart marker or
    the marker ending the scan. Detects, as libjpeg's "Corrupt JPEG data"
    / "Premature end of JPEG file" warnings would:

    * garbage before a marker ("N extraneous bytes before marker 0x..");
    * 0xFF followed by a byte that is not a valid marker (0x02-0xBF, like
      the 0xFF 0x13 of damaged data), a second SOI, a frame header (SOF)
      after the first scan, a segment length running past the file;
    * restart markers out of sequence (RST0..7 cyclic, restarting at RST0
      in every scan) or present without DRI;
    * a file ending before EOI (truncation), or an EOI before any scan.

    It cannot see damage that keeps the marker structure: bit flips,
    overwrites, insertions or deletions in Huffman data that create no 0xFF
    byte (p = 1/256 per random byte) and touch no restart marker; a wrong
    MCU count (libjpeg's "extraneous bytes" after decoding: that needs
    Huffman decoding); restart intervals lost in multiples of 8; bad table
    contents; a stray 0xFF 0xD9 in the data (read as the end; bytes after
    EOI are ignored, as by libjpeg). Markers 0xC8 and 0xF0-0xFD, which
    libjpeg rejects, pass.

    Speed (bytes.find, no per-byte Python loop), measured on a 1.17 MB
    1448x1448 q95 JPEG: 0.8 ms baseline, 0.6 ms progressive, 3.1 ms with a
    restart marker after every MCU (8,000 markers).
    """
    size = len(data)
    if data[:2] != b'\xff\xd8':
        return 'not a JPEG file: no SOI marker'
    pos, restart_interval, scans = 2, 0, 0
    while True:
        # libjpeg's next_marker: skip garbage (counted), then 0xFF fill.
        ff = data.find(b'\xff', pos)
        if ff < 0:
            return 'premature end of file: no EOI marker'
        if ff > pos:
            marker = data[ff + 1] if ff + 1 < size else None
            return (f'{ff - pos} extraneous bytes before marker '
                    f'{_hex(marker)} at offset {pos}')
        pos = ff + 1
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            return 'premature end of file: no EOI marker'
        marker, pos = data[pos], pos + 1
        if marker == 0xD9:
            return None if scans else 'EOI marker before any scan (SOS)'
        if marker == 0xD8:
            return f'second SOI marker at offset {pos - 2}'
        if marker < 0xC0 and marker != 0x01:
            return f'invalid marker {_hex(marker)} at offset {pos - 2}'
        if marker in _STANDALONE:
            continue
        if pos + 2 > size:
            return 'premature end of file inside a marker segment'
        length = int.from_bytes(data[pos:pos + 2], 'big')
        if length < 2 or pos + length > size:
            return (f'marker {_hex(marker)} at offset {pos - 2}: length '
                    f'{length} is invalid or beyond the end of the file')
        if scans and marker in _SOF:
            return f'frame header (SOF) after a scan at offset {pos - 2}'
        if marker == 0xDD and length >= 4:
            restart_interval = int.from_bytes(data[pos + 2:pos + 4], 'big')
        pos += length
        if marker == 0xDA:
            scans += 1
            pos, problem = _scan_entropy_data(data, pos, restart_interval)
            if problem is not None:
                return problem


def _scan_entropy_data(data: bytes, pos: int, restart_interval: int):
    """``(offset of the marker ending the scan, problem or None)``."""
    size, next_rst = len(data), 0
    while True:
        ff = data.find(b'\xff', pos)
        if ff < 0:
            return size, 'premature end of data segment: no EOI marker'
        end = ff + 1
        while end < size and data[end] == 0xFF:  # fill bytes
            end += 1
        if end >= size:
            return size, 'premature end of data segment: no EOI marker'
        byte = data[end]
        if byte == 0x00:
            pos = end + 1
        elif 0xD0 <= byte <= 0xD7:
            if not restart_interval:
                return end, (f'restart marker {_hex(byte)} at offset {ff} '
                             'without a restart interval (DRI)')
            if byte - 0xD0 != next_rst:
                return end, (f'found marker {_hex(byte)} instead of RST'
                             f'{next_rst} at offset {ff}')
            next_rst, pos = (next_rst + 1) % 8, end + 1
        else:  # a marker ends the scan; the segment walk judges it
            return ff, None


def _hex(marker: Optional[int]) -> str:
    return 'end of file' if marker is None else f'0x{marker:02x}'
