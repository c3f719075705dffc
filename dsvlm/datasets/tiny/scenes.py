"""Scenes of the tiny world: coloured shapes in the cells of a 2x2 grid.

A scene is a tuple of objects ``(cell, shape, color)`` sorted by cell, with
distinct cells, distinct shapes and distinct colours, so that "the circle",
"the blue object" and "the red circle" each name exactly one object.  Cells
are numbered in reading order: 0 top left, 1 top right, 2 bottom left,
3 bottom right.  Every cell is half the image wide, so with a 32x32 image and
patch 8 each cell is 2x2 patches.
"""
import itertools

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 80, 230),
    'yellow': (235, 210, 30),
    'purple': (150, 60, 200),
    'orange': (245, 140, 30),
}
SHAPES = ('circle', 'square', 'triangle')
POSITIONS = ('top left', 'top right', 'bottom left', 'bottom right')
BACKGROUND = (0, 0, 0)
GRID = 2


def all_scenes(num_objects):
    """Every scene with ``num_objects`` objects, in a fixed order."""
    scenes = []
    for cells in itertools.combinations(range(GRID * GRID), num_objects):
        for shapes in itertools.permutations(SHAPES, num_objects):
            for colors in itertools.permutations(COLORS, num_objects):
                scenes.append(tuple(zip(cells, shapes, colors)))
    return scenes


def split_scenes(rng, max_shapes, test_fraction):
    """Partition the scenes of each size into train and test pools.

    Returns ``{'train': {k: [scene, ...]}, 'test': {k: [...]}}``: a test
    scene never appears in train (its objects do, in other combinations).
    """
    pools = {'train': {}, 'test': {}}
    for k in range(1, max_shapes + 1):
        scenes = all_scenes(k)
        order = rng.permutation(len(scenes))
        num_test = min(len(scenes) - 1,
                       max(1, int(round(test_fraction * len(scenes)))))
        pools['test'][k] = [scenes[i] for i in order[:num_test]]
        pools['train'][k] = [scenes[i] for i in order[num_test:]]
    return pools


SCENE_WEIGHTINGS = ('per_count', 'per_scene')


def sample_scene(rng, pool, max_shapes, jitter, weighting='per_count'):
    """A scene from ``pool`` and a pixel offset for each of its objects.

    ``weighting='per_count'`` draws the number of objects uniformly, then a
    scene with that many; ``'per_scene'`` makes every scene of the pool
    equally likely (most then hold ``max_shapes`` objects, as most scenes
    do).
    """
    counts = list(range(1, max_shapes + 1))
    if weighting == 'per_count':
        k = counts[int(rng.integers(len(counts)))]
    elif weighting == 'per_scene':
        sizes = np.array([len(pool[c]) for c in counts], dtype=float)
        k = counts[int(rng.choice(len(counts), p=sizes / sizes.sum()))]
    else:
        raise ValueError(f'unknown scene weighting {weighting!r}; valid: '
                         f'{", ".join(SCENE_WEIGHTINGS)}')
    scene = pool[k][int(rng.integers(len(pool[k])))]
    offsets = rng.integers(-jitter, jitter + 1, size=(k, 2))
    return scene, [tuple(int(v) for v in o) for o in offsets]


def shape_margin(image_size):
    """Pixels between a cell border and the largest shape (before jitter)."""
    return (image_size // GRID) // 8


def draw_scene(scene, offsets, image_size):
    """Render a scene as an RGB PIL image (no anti-aliasing: exact colours)."""
    cell = image_size // GRID
    m = shape_margin(image_size)
    image = Image.new('RGB', (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for (index, shape, color), (dx, dy) in zip(scene, offsets):
        x0 = (index % GRID) * cell + dx
        y0 = (index // GRID) * cell + dy
        lo, hi = m, cell - 1 - m
        fill = COLORS[color]
        if shape == 'circle':
            draw.ellipse([x0 + lo, y0 + lo, x0 + hi, y0 + hi], fill=fill)
        elif shape == 'square':
            draw.rectangle([x0 + lo + 1, y0 + lo + 1, x0 + hi - 1, y0 + hi - 1],
                           fill=fill)
        else:
            draw.polygon([(x0 + (cell - 1) / 2, y0 + lo), (x0 + lo, y0 + hi),
                          (x0 + hi, y0 + hi)], fill=fill)
    return image


def scene_to_records(scene):
    """JSON-able ground truth of a scene."""
    return [dict(position=POSITIONS[i], shape=s, color=c) for i, s, c in scene]


def image_array(scene, offsets, image_size):
    """The rendered scene as a ``uint8`` HxWx3 array."""
    return np.asarray(draw_scene(scene, offsets, image_size))
