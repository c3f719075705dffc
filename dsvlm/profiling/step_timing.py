"""Measured cost of a config's training step, with and without its
supervisors, in one process on the same batches (``tools/benchmark.py``).

* :func:`ab_step_times`: the real training step (``model.train_step``:
  forward, backward, optimizer step) alternately with the supervisors and
  without them (the same model, ``model.supervisors`` emptied for the B
  steps), after warm-up; per variant the step times and peak memory (CUDA's
  allocator where present, else the process RSS sampled during the step).
* :func:`time_parts`: the supervised step's time by part, forward and
  backward (:mod:`.step_parts`), and the optimizer step.
* :func:`data_throughput`: samples/s of the training dataset in one
  process (one dataloader worker's rate).
"""
import statistics
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Dict, List, Sequence

import torch
from torch import nn

from .step_parts import PartRecorder, StepShape, llava_step


def _synchronize(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


class _TimeMeter:
    """Wall-clock seconds inside it (CUDA work finished at both ends)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _synchronize(self.device)
        self.value = time.perf_counter() - self.start


class PeakMemory:
    """Peak memory of what runs inside it, in bytes: CUDA's allocator peak,
    or on CPU the process RSS sampled every ``interval`` seconds."""

    def __init__(self, device, interval: float = 0.002):
        self.device, self.interval = torch.device(device), interval

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil
        process = psutil.Process()
        self.value = process.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self.value = max(self.value, process.memory_info().rss)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.value = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()


@contextmanager
def without_supervisors(model):
    """``model`` with no supervisors inside (the unsupervised step)."""
    supervisors = model.supervisors
    model.supervisors = nn.ModuleList()
    try:
        yield model
    finally:
        model.supervisors = supervisors


def ab_step_times(model, optim_wrapper, batches: Sequence[dict],
                  warmup: int, device) -> Dict[str, dict]:
    """Train on ``batches`` alternating the supervised (A) and the
    unsupervised (B) step on each; the first ``warmup`` batches are not
    measured.  Returns per variant ``times`` (s) and ``peak_memory``
    (bytes, the largest of its measured steps)."""
    results = {name: dict(times=[], peak_memory=0)
               for name in ('supervised', 'unsupervised')}
    model.train()
    for index, batch in enumerate(batches):
        for name in ('supervised', 'unsupervised'):
            context = without_supervisors(model) if name == 'unsupervised' \
                else nullcontext()
            with context, PeakMemory(device) as memory, \
                    _TimeMeter(device) as timer:
                model.train_step(batch, optim_wrapper)
            if index >= warmup:
                results[name]['times'].append(timer.value)
                results[name]['peak_memory'] = max(
                    results[name]['peak_memory'], memory.value)
    return results


def time_parts(model, optim_wrapper, shape: StepShape, device,
               repeats: int = 3) -> 'OrderedDict[str, dict]':
    """Median seconds of each part of the supervised step, forward and
    backward, over ``repeats`` runs (after one unmeasured run), and of the
    optimizer step."""
    runs: List[PartRecorder] = []
    optimizer_times = []
    model.train()
    for k in range(repeats + 1):
        recorder = PartRecorder(lambda: _TimeMeter(device))
        with optim_wrapper.optim_context(model):
            recorder.run(llava_step(model, shape, device))
        with _TimeMeter(device) as timer:
            optim_wrapper.step()
        optim_wrapper.zero_grad()
        if k:
            runs.append(recorder)
            optimizer_times.append(timer.value)
    result = OrderedDict(
        (name, dict(forward=statistics.median(r.forward[name] for r in runs),
                    backward=statistics.median(r.backward.get(name, 0.)
                                               for r in runs)))
        for name in runs[0].forward)
    result['optimizer_step'] = dict(
        forward=0., backward=statistics.median(optimizer_times))
    return result


def data_throughput(dataset, samples: int) -> float:
    """Samples/s of reading ``samples`` items of ``dataset`` (decoding,
    tokenising, the image processor) in this process."""
    samples = min(samples, len(dataset))
    start = time.perf_counter()
    for index in range(samples):
        dataset[index]
    return samples / (time.perf_counter() - start)


def summarize_ab(results: Dict[str, dict], samples: int,
                 tokens: int) -> dict:
    """Medians, throughput and the supervised/unsupervised ratios."""
    out = {}
    for name, result in results.items():
        median = statistics.median(result['times'])
        out[name] = dict(median_step_s=median,
                         samples_per_s=samples / median,
                         tokens_per_s=tokens / median,
                         peak_memory_bytes=result['peak_memory'],
                         steps=len(result['times']))
    sup, unsup = out['supervised'], out['unsupervised']
    out['ratio'] = dict(
        step_time=sup['median_step_s'] / unsup['median_step_s'],
        peak_memory=sup['peak_memory_bytes'] / unsup['peak_memory_bytes'])
    return out
