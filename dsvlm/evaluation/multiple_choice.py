"""Multiple-choice accuracy with MMBench's circular evaluation, as VLMEvalKit
scores it under ``judge='exact_matching'`` (no LLM judge).

VLMEvalKit (commit e8e78f05), ``vlmeval/dataset/utils/multiple_choice.py``:

* ``mcq_vanilla_eval`` / ``eval_vanilla``: a row is right when the extracted
  letter (:func:`~dsvlm.evaluation.answer_extraction.extract_choice`, i.e.
  ``can_infer``; 'Z' when nothing is found) equals the answer letter;
* ``mcq_circular_eval`` / ``prefetch_circular_group``: ``g_index = int(index
  % 1e6)``; the rows with ``index == g_index`` are the questions, the rows
  with ``index >= 1e6`` their rotated copies; a question is right only when
  it and every copy are right; copies whose question is missing are not
  scored;
* ``report_acc``: ``Overall`` and the accuracy of each ``l2-category`` and
  ``category`` value, as fractions in [0, 1] (the ``*_acc.csv`` numbers;
  leaderboards show them x100).  The values are kept as they are (VLMEvalKit
  abbreviates MMBench's l2-categories, e.g. ``coarse_perception`` -> CP);
* ``ImageMCQDataset.evaluate`` with ``PRINT_VANILLA=1``: the vanilla accuracy
  of the original rows (``vanilla_0``) and of all rows (``vanilla_all``);
* ``MMMU_preproc``: for MMMU an open question (no option A) becomes
  A = its answer, B = 'Other Answers', and an answer that is not a letter
  becomes 'A'.
"""
import logging
import string
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Union

from mmengine.logging import print_log

from dsvlm.registry import METRICS
from .answer_extraction import extract_choice
from .benchmark_metric import BenchmarkMetric, describe, sample_field

CIRCULAR_OFFSET = 1_000_000


def mean(hits: Sequence[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.


def mmmu_open_to_choice(options: Dict[str, str], gt: str):
    """VLMEvalKit's ``MMMU_preproc`` for one row: ``(options, gt)``."""
    if 'A' not in options:
        options = dict(A=gt, B='Other Answers')
    if gt not in string.ascii_uppercase or len(gt) != 1:
        gt = 'A'
    return options, gt


@METRICS.register_module()
class MultipleChoiceAccuracy(BenchmarkMetric):
    """Accuracy of multiple-choice answers (MMBench, MMStar, SEED, MMMU...).

    Args:
        circular (bool | 'auto'): MMBench circular evaluation. 'auto' turns it
            on when some row's TSV index is >= 1e6 (a rotated copy).
            VLMEvalKit decides by the benchmark's name (MMBench, CCBench,
            ...); the files of those benchmarks are the ones with copies.
        group_keys (tuple[str]): sample fields (or TSV columns) to report
            the accuracy of each value of.
        mmmu_open_questions (bool | 'auto'): apply VLMEvalKit's
            ``MMMU_preproc``; 'auto' when the benchmark's name has 'MMMU',
            as VLMEvalKit does.
        prediction_file (str, optional): see :class:`BenchmarkMetric`.

    Metrics (fractions in [0, 1], as VLMEvalKit's ``*_acc.csv``):
        ``accuracy``, ``accuracy/<key>/<value>``, ``num_questions`` (with
        circular: questions, not rows); with circular also
        ``vanilla_accuracy`` (original rows alone) and
        ``vanilla_all_accuracy`` (every row on its own); ``num_rows`` and
        ``num_scored`` (rows of the file, rows scored).
    """

    def __init__(self,
                 circular: Union[bool, str] = 'auto',
                 group_keys: Sequence[str] = ('category', 'l2-category'),
                 mmmu_open_questions: Union[bool, str] = 'auto',
                 prediction_file: Optional[str] = None,
                 **kwargs):
        super().__init__(prediction_file=prediction_file, **kwargs)
        for name, value in (('circular', circular),
                            ('mmmu_open_questions', mmmu_open_questions)):
            if value not in (True, False, 'auto'):
                raise ValueError(f'MultipleChoiceAccuracy: `{name}` must be '
                                 f"True, False or 'auto', not {value!r}")
        self.circular = circular
        self.group_keys = tuple(group_keys)
        self.mmmu_open_questions = mmmu_open_questions

    def score_sample(self, record: dict, sample: dict) -> dict:
        options = sample.get('options')
        if not options:  # VLMEvalKit's build_choices: the letter columns
            options = {k: v for k, v in record['row'].items()
                       if k in string.ascii_uppercase and v not in (None, '')}
        options, gt = dict(options), record['gt'].strip()
        mmmu = self.mmmu_open_questions
        if mmmu is True or (mmmu == 'auto'
                            and 'MMMU' in str(record['benchmark'])):
            options, gt = mmmu_open_to_choice(options, gt)
        if gt not in options:
            raise ValueError(
                f'{describe(record)}: the answer {gt!r} is not one of the '
                f'options {sorted(options)}; MultipleChoiceAccuracy scores '
                'answers given as option letters')
        record['extracted'] = extract_choice(record['prediction'], options)
        record['hit'] = record['extracted'] == gt
        record['groups'] = {k: sample_field(sample, k)
                            for k in self.group_keys}
        try:
            record['tsv_index'] = int(str(record['id']).strip())
        except ValueError:
            record['tsv_index'] = None
        return record

    def summarize(self, records: List[dict]) -> Dict[str, float]:
        circular = self.circular
        if circular == 'auto':
            circular = any(r['tsv_index'] is not None
                           and r['tsv_index'] >= CIRCULAR_OFFSET
                           for r in records)
        if not circular:
            questions = [(r, r['hit']) for r in records]
            return self._report(questions)
        for r in records:
            if r['tsv_index'] is None:
                raise ValueError(
                    f'{describe(r)}: circular evaluation needs integer TSV '
                    'indices (a rotated copy of row i has index i + k*1e6)')
        hits = defaultdict(list)
        for r in records:
            hits[r['tsv_index'] % CIRCULAR_OFFSET].append(r['hit'])
        main = [r for r in records if r['tsv_index'] < CIRCULAR_OFFSET]
        orphans = set(hits) - {r['tsv_index'] for r in main}
        if orphans:
            print_log(
                f'MultipleChoiceAccuracy: {len(orphans)} rotated questions '
                'have no original row among the samples and are not scored '
                '(as in VLMEvalKit)', logger='current', level=logging.WARNING)
        questions = [(r, all(hits[r['tsv_index']])) for r in main]
        metrics = self._report(questions)
        metrics['vanilla_accuracy'] = mean([r['hit'] for r in main])
        metrics['vanilla_all_accuracy'] = mean([r['hit'] for r in records])
        return metrics

    def _report(self, questions) -> Dict[str, float]:
        """VLMEvalKit's ``report_acc`` over ``(record, hit)`` pairs."""
        metrics = dict(accuracy=mean([hit for _, hit in questions]),
                       num_questions=len(questions))
        for key in self.group_keys:
            groups = defaultdict(list)
            for r, hit in questions:
                if r['groups'][key] is not None:
                    groups[str(r['groups'][key])].append(hit)
            for value in sorted(groups):
                metrics[f'accuracy/{key}/{value}'] = mean(groups[value])
        return metrics
