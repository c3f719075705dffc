"""Exact-match accuracy of generated short answers."""
import re
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from mmengine.evaluator import BaseMetric

from dsvlm.registry import METRICS


def normalize_answer(text: str) -> str:
    """Lower-case, drop surrounding punctuation and collapse whitespace."""
    text = text.strip().lower()
    text = re.sub(r'\s+', ' ', text)
    return text.strip(' .,!?;:"\'')


@METRICS.register_module()
class VQAExactMatch(BaseMetric):
    """``accuracy``: fraction of samples whose normalised ``pred_answer``
    equals the normalised ``gt_answer``; with ``group_key`` also the
    accuracy of each group (e.g. question type) as ``accuracy/<group>``."""

    default_prefix = ''

    def __init__(self, group_key: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.group_key = group_key

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'gt_answer' not in sample or 'pred_answer' not in sample:
                raise KeyError(f'sample {sample.get("id")}: VQAExactMatch '
                               'needs `gt_answer` and `pred_answer`')
            self.results.append(
                dict(correct=normalize_answer(sample['pred_answer']) ==
                     normalize_answer(sample['gt_answer']),
                     group=sample.get(self.group_key)
                     if self.group_key else None))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        metrics = dict(accuracy=sum(r['correct'] for r in results) /
                       max(len(results), 1))
        groups = defaultdict(list)
        for r in results:
            if r['group'] is not None:
                groups[r['group']].append(r['correct'])
        for name, hits in sorted(groups.items()):
            metrics[f'accuracy/{name}'] = sum(hits) / len(hits)
        return metrics
