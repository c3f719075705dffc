"""What every benchmark metric shares: reading a data sample, the coverage
check and the prediction file.

A benchmark data sample carries ``id`` (the TSV ``index``), ``index`` (its
row in the file), ``benchmark`` (the file stem), ``row`` (the TSV columns
but ``image``, as strings), ``options``, ``gt_answer``, ``category``,
``num_rows`` (rows in the whole file) and, after the model's ``predict``,
``pred_answer`` (the generated text).
"""
import logging
from collections import Counter
from typing import Dict, List, Optional, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from .prediction_file import write_prediction_files


def sample_field(sample: dict, key: str):
    """``sample[key]``, else the TSV column ``key`` of ``sample['row']``;
    None for a missing or empty value."""
    value = sample.get(key)
    if value is None or value == '':
        value = (sample.get('row') or {}).get(key)
    return None if value is None or value == '' else value


def describe(record: dict) -> str:
    return f'sample id={record["id"]!r} of benchmark {record["benchmark"]!r}'


def check_coverage(records: Sequence[dict], metric: str) -> Dict[str, int]:
    """``num_scored`` (distinct rows scored) and ``num_rows`` (rows of the
    benchmark files the samples come from); a WARNING when fewer rows were
    scored than the files hold, so a partial score is never silent."""
    scored = Counter(r['benchmark'] for r in records)
    file_rows = {}
    for r in records:
        if r['num_rows'] is not None:
            file_rows.setdefault(r['benchmark'], int(r['num_rows']))
    if not file_rows:
        print_log(f'{metric}: the samples report no `num_rows`, so whether '
                  'every row of the benchmark was scored is unknown',
                  logger='current', level=logging.WARNING)
        return dict(num_scored=len(records))
    for benchmark, rows in sorted(file_rows.items(), key=str):
        if scored[benchmark] < rows:
            print_log(
                f'{metric}: scored {scored[benchmark]} of {rows} rows of '
                f'benchmark {benchmark!r}; the metrics cover only these '
                'rows (an evaluation limited to part of the file?)',
                logger='current', level=logging.WARNING)
    return dict(num_rows=sum(file_rows.values()), num_scored=len(records))


class BenchmarkMetric(BaseMetric):
    """Base of the benchmark metrics.

    ``process`` turns each data sample into a record (``id``, ``benchmark``,
    ``position``, ``num_rows``, ``row``, ``prediction``, ``gt``) and hands it
    to :meth:`score_sample`; ``compute_metrics`` (rank 0, after MMEngine has
    collected every rank's records) drops duplicate rows, writes the
    prediction file, asks :meth:`summarize` for the scores and adds the
    coverage counts (:func:`check_coverage`).

    Args:
        prediction_file (str, optional): where to write the per-sample TSV
            (see :mod:`dsvlm.evaluation.prediction_file`); ``{benchmark}``
            in it is replaced by the samples' benchmark.
    """

    default_prefix = ''

    def __init__(self, prediction_file: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.prediction_file = prediction_file

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            record = self.read_sample(sample)
            self.results.append(self.score_sample(record, sample))

    def read_sample(self, sample: dict) -> dict:
        row = dict(sample.get('row') or {})
        tsv_index = sample.get('id', row.get('index', sample.get('index')))
        record = dict(id=tsv_index,
                      benchmark=sample.get('benchmark'),
                      position=sample.get('index'),
                      num_rows=sample.get('num_rows'),
                      row=row)
        name = type(self).__name__
        if sample.get('pred_answer') is None:
            raise ValueError(f'{describe(record)}: {name} needs '
                             '`pred_answer` (the generated text), which the '
                             'sample lacks')
        gt = sample.get('gt_answer')
        if gt is None or str(gt).strip() == '':
            raise ValueError(f'{describe(record)}: {name} needs a '
                             'ground-truth `gt_answer` (the TSV `answer` '
                             'column), which the sample lacks')
        record.update(prediction=str(sample['pred_answer']), gt=str(gt))
        return record

    def score_sample(self, record: dict, sample: dict) -> dict:
        """Add ``extracted`` and ``hit`` (and whatever :meth:`summarize`
        needs) to ``record``."""
        raise NotImplementedError

    def summarize(self, records: List[dict]) -> Dict[str, float]:
        raise NotImplementedError

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        records = self._unique(results)
        if self.prediction_file:
            for path in write_prediction_files(self.prediction_file, records):
                print_log(f'{type(self).__name__}: wrote the predictions to '
                          f'{path}', logger='current')
        metrics = self.summarize(records) if records else {}
        metrics.update(check_coverage(records, type(self).__name__))
        return metrics

    def _unique(self, results: List[dict]) -> List[dict]:
        seen, records = set(), []
        for r in results:
            key = (r['benchmark'], r['id'])
            if key not in seen:
                seen.add(key)
                records.append(r)
        if len(records) < len(results):
            print_log(f'{type(self).__name__}: dropped '
                      f'{len(results) - len(records)} samples whose id was '
                      'already scored', logger='current',
                      level=logging.WARNING)
        return records
