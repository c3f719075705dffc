"""What a training dataset does with a sample it cannot use during a run.

``policy='stop'`` raises the sample's :class:`DataError` (file, line, id,
reason).  ``policy='skip'`` records the sample and the dataset gives the next
usable sample in its place (same index, so batches keep their shape and every
rank its step count): one JSON line per skipped sample in ``record_file``
(``ann_file``, ``index``, ``line``, ``id``, ``kind``, ``message``), and a
warning in the log with the running count.  Once more than ``max_fraction``
of a file's samples were skipped the run stops (:class:`BadDataLimitError`),
since data that broken needs fixing, not training on.

Every process (ranks, dataloader workers) appends to the same file; the
count is that of distinct samples in it, so all of them stop at the same
count.  A resumed run continues the count of its work_dir's file.
"""
import json
import logging
import math
import os
import os.path as osp
from typing import Optional, Set, Tuple

from mmengine.logging import print_log

from .errors import DataError, DataProblem

POLICIES = ('stop', 'skip')


class BadDataLimitError(RuntimeError):
    """More samples of a file were skipped than its configured fraction."""


class BadSamplePolicy:
    """See the module doc.

    Args:
        policy: ``'stop'`` or ``'skip'``.
        max_fraction: the run stops when more than this fraction of a file's
            samples were skipped.
        record_file: the JSON-lines file of skipped samples (the configs put
            it in the work_dir); None: the log only.
        max_replacements: a bad sample is replaced by the next usable one of
            at most this many that follow it.
    """

    def __init__(self, policy: str = 'stop', max_fraction: float = 0.01,
                 record_file: Optional[str] = None,
                 max_replacements: int = 100):
        if policy not in POLICIES:
            raise ValueError(f'bad_samples.policy={policy!r}; valid: '
                             f'{", ".join(POLICIES)}')
        if not 0 <= max_fraction <= 1:
            raise ValueError('bad_samples.max_fraction must be within [0, 1]'
                             f', got {max_fraction}')
        self.policy = policy
        self.max_fraction = max_fraction
        self.record_file = record_file
        self.max_replacements = max_replacements
        self._recorded: Set[Tuple[str, int]] = set()

    @property
    def skips(self) -> bool:
        return self.policy == 'skip'

    def handle(self, error: DataError, num_samples: int) -> None:
        """Raise ``error`` (``'stop'``), or record its samples and raise
        :class:`BadDataLimitError` when the skips pass ``max_fraction`` of
        ``num_samples``."""
        if not self.skips:
            raise error
        for problem in error.problems:
            self.record(problem)
        self.check_limit(error.problems[0].ann_file, num_samples)

    def record(self, problem: DataProblem) -> None:
        """Add a skipped sample to the file and the log (once per
        process)."""
        key = (problem.ann_file, problem.index, problem.line)
        if key in self._recorded:
            return
        self._recorded.add(key)
        if self.record_file:
            _append_line(self.record_file, json.dumps(dict(
                ann_file=problem.ann_file, index=problem.index,
                line=problem.line, id=problem.sample_id, kind=problem.kind,
                message=problem.message)))
        print_log(f'skipped sample: {problem} ({self.count(problem.ann_file)}'
                  f' samples of {problem.ann_file} skipped so far'
                  + (f', listed in {self.record_file}' if self.record_file
                     else '') + ')', logger='current',
                  level=logging.WARNING)

    def count(self, ann_file: str) -> int:
        """Distinct skipped samples of ``ann_file`` (all processes that
        share the record file)."""
        keys = {k for k in self._recorded if k[0] == ann_file}
        return len(keys | _recorded_keys(self.record_file, ann_file))

    def limit(self, num_samples: int) -> int:
        """The most skipped samples a file of ``num_samples`` may have."""
        return math.floor(self.max_fraction * num_samples)

    def check_limit(self, ann_file: str, num_samples: int) -> None:
        count, limit = self.count(ann_file), self.limit(num_samples)
        if count > limit:
            raise BadDataLimitError(
                f'{count} of the {num_samples} samples of {ann_file} could '
                f'not be used, more than bad_samples.max_fraction='
                f'{self.max_fraction:g} ({limit} samples): stopping. '
                + (f'They are listed with the reasons in {self.record_file}; '
                   if self.record_file else '')
                + 'tools/check_data.py CONFIG lists every problem of the '
                'data.')


def _append_line(path: str, line: str) -> None:
    """One line appended in a single write (``O_APPEND``: lines of several
    processes do not interleave)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + '\n').encode('utf-8'))
    finally:
        os.close(fd)


def _recorded_keys(path: Optional[str], ann_file: str) -> Set[Tuple]:
    if not path or not osp.isfile(path):
        return set()
    keys = set()
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a killed process
                continue
            if entry.get('ann_file') == ann_file:
                keys.add((ann_file, entry.get('index'), entry.get('line')))
    return keys


def build_bad_sample_policy(cfg) -> BadSamplePolicy:
    """A policy from a dict (or None: ``'stop'``), or the policy itself."""
    if isinstance(cfg, BadSamplePolicy):
        return cfg
    return BadSamplePolicy(**(cfg or {}))
