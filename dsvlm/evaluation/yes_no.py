"""Yes/no benchmarks (MME, POPE, HallusionBench), as VLMEvalKit scores them
under ``judge='exact_matching'`` (no LLM judge).

VLMEvalKit (commit e8e78f05): ``ImageYORNDataset.evaluate`` in
``vlmeval/dataset/image_yorn.py`` extracts 'Yes' / 'No' / 'Unknown' with
``YOrN_Extraction`` and scores ``answer == extracted`` (case-sensitive, so
'Unknown' is always wrong); ``MME_rating``, ``POPE_rating`` and
``Hallusion_rating`` in ``vlmeval/dataset/utils/yorn.py`` turn the scores
into the numbers below, all x100 as there.
"""
import logging
from collections import defaultdict
from typing import Dict, List, Sequence

from mmengine.logging import print_log

from dsvlm.registry import METRICS
from .answer_extraction import extract_yes_no
from .benchmark_metric import BenchmarkMetric, describe, sample_field

# MME_rating's super-categories (VLMEvalKit calls cognition 'reasoning')
MME_PERCEPTION = ('OCR', 'artwork', 'celebrity', 'color', 'count',
                  'existence', 'landmark', 'position', 'posters', 'scene')
MME_COGNITION = ('code_reasoning', 'commonsense_reasoning',
                 'numerical_calculation', 'text_translation')


def percent(hits: Sequence[bool]) -> float:
    return 100. * sum(hits) / len(hits) if hits else 0.


class YesNoMetric(BenchmarkMetric):
    """Extracts the yes/no answer of each sample; the ground truth must be
    'Yes' or 'No', the values VLMEvalKit compares with."""

    required_fields: Sequence[str] = ()

    def score_sample(self, record: dict, sample: dict) -> dict:
        gt = record['gt'].strip()
        if gt not in ('Yes', 'No'):
            raise ValueError(
                f"{describe(record)}: {type(self).__name__} needs the answer "
                f"'Yes' or 'No' (VLMEvalKit compares case-sensitively), not "
                f'{record["gt"]!r}')
        record['gt'] = gt
        record['extracted'] = extract_yes_no(record['prediction'])
        record['hit'] = record['extracted'] == gt
        for key in self.required_fields + ('category', ):
            record[key] = sample_field(sample, key)
        for key in self.required_fields:
            if record[key] is None:
                raise ValueError(
                    f'{describe(record)}: {type(self).__name__} needs the '
                    f'TSV column `{key}`, which the sample lacks')
        return record


@METRICS.register_module()
class MMEScore(YesNoMetric):
    """MME (``MME_rating``).

    For each sub-task (``category``): ``acc/<task>`` = questions right,
    ``acc_plus/<task>`` = images (grouped by ``image_path``, as VLMEvalKit)
    with both questions right, ``score/<task>`` = acc + acc+ (out of 200).
    ``perception`` / ``cognition``: the sum of the scores of MME's 10
    perception / 4 cognition sub-tasks that are present (VLMEvalKit requires
    all of them; a WARNING names the missing ones).  VLMEvalKit multiplies
    the first two answers of an image; here an image counts when all its
    answers are right, the same for MME's two questions per image.
    """

    required_fields = ('image_path', 'category')

    def summarize(self, records: List[dict]) -> Dict[str, float]:
        images = defaultdict(lambda: defaultdict(list))
        for r in records:
            images[str(r['category'])][str(r['image_path'])].append(r['hit'])
        metrics, scores = {}, {}
        for task in sorted(images):
            per_image = images[task].values()
            acc = percent([h for hits in per_image for h in hits])
            acc_plus = percent([all(hits) for hits in per_image])
            metrics[f'acc/{task}'] = acc
            metrics[f'acc_plus/{task}'] = acc_plus
            scores[task] = metrics[f'score/{task}'] = acc + acc_plus
        for name, tasks in (('perception', MME_PERCEPTION),
                            ('cognition', MME_COGNITION)):
            present = [t for t in tasks if t in scores]
            if not present:
                continue
            if len(present) < len(tasks):
                print_log(f'MMEScore: `{name}` sums {len(present)} of '
                          f'{len(tasks)} sub-tasks; missing: '
                          f'{sorted(set(tasks) - set(present))}',
                          logger='current', level=logging.WARNING)
            metrics[name] = sum(scores[t] for t in present)
        return metrics


@METRICS.register_module()
class POPEScore(YesNoMetric):
    """POPE (``POPE_rating``), 'Yes' being the positive class.

    ``accuracy``, ``precision``, ``recall``, ``f1`` (VLMEvalKit's
    ``Overall``) and ``yes_ratio`` (predictions extracted as 'Yes'; not in
    VLMEvalKit, the original POPE script reports it), overall and as
    ``<metric>/<category>``.  As VLMEvalKit: a ``category`` such as
    'adversarial,popular' (a question shared by two splits) counts in each,
    the overall numbers included; an 'Unknown' prediction is wrong in
    ``accuracy`` and counts as a 'No' in precision and recall.
    """

    def summarize(self, records: List[dict]) -> Dict[str, float]:
        rows, splits = [], defaultdict(list)
        for r in records:
            cats = (str(r['category']).split(',')
                    if r['category'] is not None else [None])
            for cat in cats:
                rows.append(r)
                if cat is not None:
                    splits[cat].append(r)
        metrics = self.confusion_scores(rows)
        for cat in sorted(splits):
            for key, value in self.confusion_scores(splits[cat]).items():
                metrics[f'{key}/{cat}'] = value
        return metrics

    @staticmethod
    def confusion_scores(rows: List[dict]) -> Dict[str, float]:
        tp = sum(r['gt'] == 'Yes' and r['extracted'] == 'Yes' for r in rows)
        fp = sum(r['gt'] == 'No' and r['extracted'] == 'Yes' for r in rows)
        fn = sum(r['gt'] == 'Yes' and r['extracted'] != 'Yes' for r in rows)
        precision = tp / (tp + fp) if tp + fp else 0.
        recall = tp / (tp + fn) if tp + fn else 0.
        f1 = (2 * precision * recall / (precision + recall)
              if precision + recall else 0.)
        return dict(accuracy=percent([r['hit'] for r in rows]),
                    precision=100. * precision, recall=100. * recall,
                    f1=100. * f1,
                    yes_ratio=percent([r['extracted'] == 'Yes'
                                       for r in rows]))


@METRICS.register_module()
class HallusionBenchScore(YesNoMetric):
    """HallusionBench (``Hallusion_rating``).

    ``aAcc``: questions right; ``fAcc``: figures with all their questions
    right, a figure being (l2-category, set_id, figure_id); ``qAcc``:
    questions right on all their figures, a question being (l2-category,
    set_id, question_id).  VLMEvalKit groups by ``l2-category`` (not
    ``category``) and reads set, figure and question ids from fields 3, 4
    and 5 of the ``_``-separated TSV index; an index without them falls back
    to the ``set_id`` / ``figure_id`` / ``question_id`` columns.  Overall
    and per value of ``category`` and of ``l2-category``:
    ``<aAcc|fAcc|qAcc>/category/<value>``, ``.../l2-category/<value>``.
    """

    required_fields = ('l2-category', )

    def score_sample(self, record: dict, sample: dict) -> dict:
        record = super().score_sample(record, sample)
        parts = str(record['id']).split('_')
        if len(parts) >= 6:
            ids = parts[3:6]
        else:
            ids = [sample_field(sample, k)
                   for k in ('set_id', 'figure_id', 'question_id')]
            if None in ids:
                raise ValueError(
                    f'{describe(record)}: HallusionBenchScore reads set, '
                    'figure and question ids from fields 3-5 of the TSV '
                    "index ('_'-separated) or from the columns set_id, "
                    'figure_id, question_id; the sample has neither')
        record['set_id'], record['figure_id'], record['question_id'] = ids
        return record

    def summarize(self, records: List[dict]) -> Dict[str, float]:
        metrics = self.accuracies(records)
        for key in ('category', 'l2-category'):
            splits = defaultdict(list)
            for r in records:
                if r[key] is not None:
                    splits[str(r[key])].append(r)
            for value in sorted(splits):
                for name, acc in self.accuracies(splits[value]).items():
                    metrics[f'{name}/{key}/{value}'] = acc
        return metrics

    @staticmethod
    def accuracies(records: List[dict]) -> Dict[str, float]:
        figures, questions = defaultdict(list), defaultdict(list)
        for r in records:
            cat = str(r['l2-category'])
            figures[(cat, r['set_id'], r['figure_id'])].append(r['hit'])
            questions[(cat, r['set_id'], r['question_id'])].append(r['hit'])
        return dict(aAcc=percent([r['hit'] for r in records]),
                    fAcc=percent([all(h) for h in figures.values()]),
                    qAcc=percent([all(h) for h in questions.values()]))
