"""Benchmark configs merged into a model's config (``tools/test.py
--benchmark``): the benchmark brings the test set and the metric, the model's
config the model, tokenizer, image processor and template."""
import os.path as osp

from mmengine.config import Config

BENCHMARK_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))), 'configs', 'benchmarks')
BENCHMARK_KEYS = ('test_dataloader', 'test_evaluator', 'test_cfg')


def benchmark_config_path(name_or_path: str) -> str:
    """A benchmark config file, by path or by its name in
    ``configs/benchmarks/``."""
    if osp.isfile(name_or_path):
        return name_or_path
    path = osp.join(BENCHMARK_DIR, f'{name_or_path}.py')
    if not osp.isfile(path):
        names = sorted(n[:-3] for n in _listdir(BENCHMARK_DIR)
                       if n.endswith('.py') and not n.startswith('_'))
        raise FileNotFoundError(
            f'benchmark {name_or_path!r} is neither a config file nor one of '
            f'configs/benchmarks/: {", ".join(names)}')
    return path


def _listdir(path):
    import os
    return os.listdir(path) if osp.isdir(path) else []


def merge_benchmark(cfg, name_or_path: str):
    """Replace ``cfg``'s test set, metric and test loop by the benchmark's
    (in place); returns ``cfg``."""
    benchmark = Config.fromfile(benchmark_config_path(name_or_path))
    for key in BENCHMARK_KEYS:
        if key not in benchmark:
            raise KeyError(f'benchmark config {name_or_path!r} has no '
                           f'`{key}`')
        cfg[key] = benchmark[key]
    return cfg
