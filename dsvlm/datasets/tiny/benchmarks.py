"""The tiny world's held-out images as VLMEvalKit-format benchmarks.

Written once next to the world (``<world>/benchmarks/``), atomically and
deterministically (the same world always gives byte-identical files):

* ``tiny_mcq.tsv`` (MMBench's layout): each test question with options
  drawn from the answers of its type (4, or as many as the type has, at
  least 2), ``answer`` the right letter, ``category`` the question type,
  ``l2-category`` ``'perception'``.  Rows ``0..N-1`` hold the images; as in
  MMBench's circular evaluation each question with ``n`` options comes
  back ``n - 1`` times, as rows ``index + k * 1_000_000`` whose options are
  rotated by ``k`` (option ``i`` is the original's ``i + k``) and whose
  image cell refers to the original row.
* ``tiny_yesno.tsv`` (MME's layout): two questions per test image, one
  answered ``Yes`` and one ``No``, of one of MME's perception sub-tasks
  (``existence``, ``count``, ``position``, ``color``), with ``image_path``
  the image's file name (MME's acc+ pairs the two questions by it); the
  second row's image cell refers to the first.
"""
import base64
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from dsvlm.registry import DATASETS
from ..vlmeval_tsv import VLMEvalTSVDataset
from .atomic import build_once
from .formats import (YES_NO_CATEGORIES, YES_NO_REQUEST, answer_vocabulary,
                      letter, mcq_options, yes_no_questions)
from .shapes import IMAGE_FOLDER, ensure_shapes_world, load_world_meta
from .texts import IMAGE

BENCHMARKS = dict(mcq='tiny_mcq.tsv', yesno='tiny_yesno.tsv')
BENCHMARK_FOLDER = 'benchmarks'
PARAMS_FILE = 'dsvlm_benchmarks.json'
# bump when the files change, so that stale benchmarks are refused
BENCHMARKS_VERSION = 1
CIRCULAR_OFFSET = 1_000_000  # MMBench's circular rows: index + k * 1e6
MCQ_STREAM, YES_NO_STREAM = 0, 1  # random streams of the two files


def _test_items(world: Path):
    """``(record, question, answer, image name)`` of every test record."""
    with open(world / 'test.json') as f:
        records = json.load(f)
    for record in records:
        human, gpt = (t['value'] for t in record['conversations'][:2])
        yield (record, human.replace(IMAGE, '').strip(), gpt,
               record['image'])


def _image_base64(world: Path, name: str) -> str:
    """The PNG's bytes as they are (no re-encoding: exact colours)."""
    return base64.b64encode(
        (world / IMAGE_FOLDER / name).read_bytes()).decode('ascii')


def mcq_rows(world: Path, meta: dict) -> List[dict]:
    """The rows of ``tiny_mcq.tsv``: originals first, then rotations."""
    seed, max_shapes = meta['params']['seed'], meta['params']['max_shapes']
    originals, rotations = [], []
    for j, (record, question, answer, name) in enumerate(_test_items(world)):
        rng = np.random.default_rng([seed, MCQ_STREAM, j])
        qtype = record['question_type']
        options = mcq_options(rng, answer_vocabulary(qtype, max_shapes),
                               answer)
        row = dict(index=str(j), image=_image_base64(world, name),
                   question=question, category=qtype,
                   **{'l2-category': 'perception'})
        n = len(options)
        for k in range(n):
            rotated = [options[(i + k) % n] for i in range(n)]
            cells = dict(row, answer=letter(rotated.index(answer)),
                         **{letter(i): o for i, o in enumerate(rotated)})
            if k:
                cells.update(index=str(j + k * CIRCULAR_OFFSET), image=str(j))
                rotations.append((k, j, cells))
            else:
                originals.append(cells)
    return originals + [cells for _, _, cells in sorted(
        rotations, key=lambda r: r[:2])]


def yes_no_rows(world: Path, meta: dict) -> List[dict]:
    """The rows of ``tiny_yesno.tsv``: a Yes and a No row per image."""
    seed, max_shapes = meta['params']['seed'], meta['params']['max_shapes']
    with open(world / 'scenes.json') as f:
        scenes = json.load(f)
    rows = []
    for j, (_, _, _, name) in enumerate(_test_items(world)):
        rng = np.random.default_rng([seed, YES_NO_STREAM, j])
        category = YES_NO_CATEGORIES[j % len(YES_NO_CATEGORIES)]
        questions = yes_no_questions(category, scenes[name]['objects'], rng,
                                      max_shapes)
        first = 2 * j
        for k, (question, answer) in enumerate(zip(questions, ('Yes', 'No'))):
            rows.append(dict(
                index=str(first + k),
                image=_image_base64(world, name) if k == 0 else str(first),
                question=question + YES_NO_REQUEST, answer=answer,
                category=category, image_path=name))
    return rows


MCQ_COLUMNS = ['index', 'image', 'question', 'answer', 'category',
               'l2-category']
YES_NO_COLUMNS = ['index', 'image', 'question', 'answer', 'category',
                  'image_path']


def _write_tsv(path: Path, columns: List[str], rows: List[dict]) -> None:
    with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(columns)
        writer.writerows([row.get(c, '') for c in columns] for row in rows)


def _build(world: Path, meta: dict, out: Path, params: dict) -> None:
    mcq = mcq_rows(world, meta)
    letters = sorted({k for row in mcq for k in row
                      if len(k) == 1 and k.isupper()})
    _write_tsv(out / BENCHMARKS['mcq'],
               MCQ_COLUMNS[:3] + letters + MCQ_COLUMNS[3:], mcq)
    _write_tsv(out / BENCHMARKS['yesno'], YES_NO_COLUMNS,
               yes_no_rows(world, meta))
    with open(out / PARAMS_FILE, 'w') as f:  # last: marks it complete
        json.dump(dict(params=params), f, indent=1, sort_keys=True)
        f.write('\n')


def write_tiny_benchmarks(world_root,
                          out_dir: Optional[str] = None) -> Dict[str, Path]:
    """Write the benchmarks of the world at ``world_root`` once.

    Args:
        world_root: a generated world (:func:`ensure_shapes_world`).
        out_dir: where to write; ``<world_root>/benchmarks`` by default.
            An existing ``out_dir`` written from another world is an error.

    Returns:
        ``{'mcq': path of tiny_mcq.tsv, 'yesno': path of tiny_yesno.tsv}``
    """
    world = Path(world_root)
    meta = load_world_meta(world)
    target = Path(out_dir) if out_dir is not None else (world /
                                                        BENCHMARK_FOLDER)
    params = dict(version=BENCHMARKS_VERSION, world=meta['params'])
    build_once(target, params,
               lambda tmp: _build(world, meta, Path(tmp), params),
               PARAMS_FILE, 'tiny-world benchmark set')
    return {name: target / file for name, file in BENCHMARKS.items()}


def existing_world(data_root) -> Path:
    """``data_root``, when a complete world is there."""
    if not (Path(data_root) / 'meta.json').is_file():
        raise FileNotFoundError(
            f'no tiny world at {data_root}: train a tiny config first (it '
            'generates the world), or give the world parameters (`world=`)')
    return Path(data_root)


@DATASETS.register_module()
class TinyBenchmarkDataset(VLMEvalTSVDataset):
    """A benchmark of the tiny world at ``data_root``, the world and the
    benchmark files generated on first use.

    Args:
        data_root: where the world lives (e.g. ``data/tiny_shapes``).
        benchmark: ``'mcq'`` or ``'yesno'``.
        world: world parameters (see :func:`ensure_shapes_world`); None
            takes the world already at ``data_root`` (the one a tiny config
            trained on), whatever its parameters.
        **kwargs: :class:`VLMEvalTSVDataset` arguments.
    """

    def __init__(self, data_root: str, benchmark: str = 'mcq',
                 world: Optional[dict] = None, **kwargs):
        if benchmark not in BENCHMARKS:
            raise ValueError(f'TinyBenchmarkDataset benchmark={benchmark!r}; '
                             f'choose one of {", ".join(BENCHMARKS)}')
        root = existing_world(data_root) if world is None else \
            ensure_shapes_world(data_root, **world)
        super().__init__(data_file=write_tiny_benchmarks(root)[benchmark],
                         **kwargs)
