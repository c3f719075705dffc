"""tools/test.py --benchmark: the tiny world's benchmarks scored end to end,
in one process and in two (tools/dist_test.sh, gloo), with the same score
and the same per-sample predictions."""
import csv
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from dsvlm.engine.benchmark import benchmark_config_path
from ports import free_port
from test_export_tool import _checkpoint, _load_tiny, _options

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/tiny/llava_tiny.py'


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A tiny world and a checkpoint of the tiny LLaVA."""
    root = tmp_path_factory.mktemp('bench')
    cfg = _load_tiny(CONFIG, root / 'world')
    _checkpoint(cfg, root / 'iter_1.pth')
    from dsvlm.datasets.tiny.shapes import ensure_shapes_world
    ensure_shapes_world(root / 'world', **cfg.test_dataloader.dataset.world)
    return root


def _test(root, work_dir, benchmark, processes=1):
    options = [f'{k}={v}' for k, v in _options(root / 'world').items()
               if not k.startswith(('val_', 'test_', 'train_'))]
    options.append(f'test_dataloader.dataset.data_root={root / "world"}')
    args = [CONFIG, str(root / 'iter_1.pth'), '--benchmark', benchmark,
            '--work-dir', str(work_dir), '--cfg-options', *options]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
               PORT=str(free_port()), PYTHON=sys.executable)
    if processes == 1:
        cmd = [sys.executable, 'tools/test.py', *args]
    else:
        cmd = ['bash', 'tools/dist_test.sh', args[0], args[1],
               str(processes), *args[2:]]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(work_dir / f'{benchmark}_metrics.json') as f:
        return json.load(f)


def _predictions(work_dir, name):
    with open(work_dir / 'predictions' / f'{name}.tsv', newline='') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def test_multiple_choice_in_one_and_two_processes(tiny_run):
    one = _test(tiny_run, tiny_run / 'one', 'tiny_mcq')
    two = _test(tiny_run, tiny_run / 'two', 'tiny_mcq', processes=2)
    assert one == two
    rows = _predictions(tiny_run / 'one', 'tiny_mcq')
    assert rows == _predictions(tiny_run / 'two', 'tiny_mcq')
    # every row of the file scored, circular rotations included
    with open(tiny_run / 'world' / 'benchmarks' / 'tiny_mcq.tsv') as f:
        num_rows = sum(1 for _ in f) - 1
    assert one['num_rows'] == one['num_scored'] == num_rows == len(rows)
    assert any(int(r['index']) >= 1_000_000 for r in rows)
    for key in ('accuracy', 'vanilla_accuracy', 'num_questions'):
        assert key in one
    # circular accuracy: a question counts if every rotation is right
    by_question = {}
    for r in rows:
        right = r['extracted'] == r['answer']
        q = int(r['index']) % 1_000_000
        by_question[q] = by_question.get(q, True) and right
    assert one['accuracy'] == pytest.approx(
        sum(by_question.values()) / len(by_question))


def test_yes_no_scores_every_sub_task(tiny_run):
    metrics = _test(tiny_run, tiny_run / 'yesno', 'tiny_yesno')
    assert metrics['num_rows'] == metrics['num_scored']
    tasks = {k.split('/', 1)[1] for k in metrics if k.startswith('acc/')}
    assert tasks and {f'score/{t}' for t in tasks} <= set(metrics)
    assert metrics['perception'] == pytest.approx(
        sum(metrics[f'score/{t}'] for t in tasks))


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match='mmbench_dev_en.*') as e:
        benchmark_config_path('mmbench_dev')
    assert 'tiny_mcq' in str(e.value) and 'pope' in str(e.value)
