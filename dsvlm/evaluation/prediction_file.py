"""Per-sample prediction files in the form VLMEvalKit scores.

The file is a TSV with every column of the benchmark's TSV except ``image``
(``index``, ``question``, ``answer``, ``A``..., ``category``, ...), in the
file's row order, plus ``prediction`` (the raw generated text, the column
VLMEvalKit's ``evaluate()`` reads) and ``extracted`` (the rule-based answer
this platform scored; VLMEvalKit recomputes its own).  VLMEvalKit's
``load()`` reads it with ``pandas.read_csv(path, sep='\\t')``.

To score it with VLMEvalKit (no model is run; with ``exact_matching`` no
judge is called either)::

    from vlmeval.dataset import build_dataset
    build_dataset('MMBench_DEV_EN').evaluate(
        'work_dirs/x/MMBench_DEV_EN.tsv', model='exact_matching')

``evaluate`` downloads the benchmark's TSV for the ground truth, writes its
intermediate and score files (``*_acc.csv``, ``*_score.csv``) next to the
prediction file, and returns the scores, so copy the file into a scratch
folder first.  ``run.py --mode eval`` is less handy: it looks for
``{model}_{dataset}.{PRED_FORMAT}`` in a run folder it names itself
(``{work_dir}/{model}/{eval_id}/``).
"""
import csv
import os
import tempfile
from collections import defaultdict
from typing import Dict, List, Sequence

PREDICTION_COLUMN = 'prediction'
EXTRACTED_COLUMN = 'extracted'


def prediction_file_path(template: str, benchmark: str) -> str:
    """``template`` with ``{benchmark}`` replaced by the benchmark's name."""
    return template.replace('{benchmark}', str(benchmark))


def write_tsv_atomic(path: str, columns: Sequence[str],
                     rows: Sequence[Dict[str, object]]) -> None:
    """Write ``rows`` under ``columns`` to a temporary file next to ``path``
    and move it into place, so a reader never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_',
                               suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, 'w', encoding='utf-8', newline='') as f:
            writer = csv.writer(f, delimiter='\t', lineterminator='\n')
            writer.writerow(columns)
            for row in rows:
                writer.writerow(['' if row.get(c) is None else row.get(c)
                                 for c in columns])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_prediction_files(template: str,
                           records: Sequence[dict]) -> List[str]:
    """One TSV per benchmark in ``records``; returns the paths written.

    Each record carries ``benchmark``, ``position`` (its row in the file),
    ``row`` (the TSV columns), ``prediction`` and ``extracted``.
    """
    by_benchmark = defaultdict(list)
    for record in records:
        by_benchmark[record['benchmark']].append(record)
    if len(by_benchmark) > 1 and '{benchmark}' not in template:
        raise ValueError(
            f'prediction_file={template!r} has no `{{benchmark}}` but the '
            f'samples come from {len(by_benchmark)} benchmarks '
            f'({sorted(map(str, by_benchmark))}): each needs its own file')
    paths = []
    for benchmark, group in by_benchmark.items():
        group = sorted(group, key=_file_order)
        columns = []
        for record in group:
            columns.extend(c for c in record['row'] if c not in columns)
        columns = [c for c in columns
                   if c not in (PREDICTION_COLUMN, EXTRACTED_COLUMN)]
        columns += [PREDICTION_COLUMN, EXTRACTED_COLUMN]
        rows = [dict(r['row'], **{PREDICTION_COLUMN: r['prediction'],
                                  EXTRACTED_COLUMN: r.get('extracted')})
                for r in group]
        path = prediction_file_path(template, benchmark)
        write_tsv_atomic(path, columns, rows)
        paths.append(path)
    return paths


def _file_order(record: dict):
    """The row's position in the file (the dataset index); the TSV index
    when the sample has no position."""
    if record.get('position') is not None:
        return (0, int(record['position']), '')
    return (1, 0, str(record['id']))
