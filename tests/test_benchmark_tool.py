"""tools/benchmark.py's measurements (dsvlm/profiling/step_timing.py): the
A/B steps really differ by the supervisors only, the ratios are those of
the measured medians, peak memory sees an allocation, and the tool runs on
the tiny DS-VLM."""
import time

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.profiling.step_parts import StepShape
from dsvlm.profiling.step_timing import (PeakMemory, ab_step_times,
                                         summarize_ab, time_parts)
from dsvlm.registry import MODELS
from tests.model_factory import (TINY_LLAMA, tiny_supervisor_cfg,
                                 tiny_vlm_cfg)
from tests.test_tiny_world_training import world_options
from tests.tool_loader import load_tool

init_default_scope('dsvlm')


def _model_and_optimizer():
    torch.manual_seed(0)
    model = MODELS.build(tiny_vlm_cfg(supervisors=[tiny_supervisor_cfg()]))
    wrapper = build_optim_wrapper(model, dict(
        type='FiniteStepOptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))
    return model, wrapper


def _batch(size=2, text=10):
    ids = torch.randint(3, TINY_LLAMA['vocab_size'], (size, text + 1))
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :-4] = IGNORE_INDEX
    return dict(inputs=dict(
        input_ids=ids, labels=labels,
        attention_mask=torch.ones_like(ids, dtype=torch.bool),
        pixel_values=torch.randn(size, 3, 32, 32),
        has_image=torch.ones(size, dtype=torch.bool)),
        data_samples=[dict(id=str(i)) for i in range(size)])


def test_the_b_steps_run_without_the_supervisors():
    model, wrapper = _model_and_optimizer()
    calls = []
    model.supervisors[0].register_forward_pre_hook(
        lambda *args: calls.append(1))
    supervisor = model.supervisors[0]
    supervisor.loss = _counting(supervisor.loss, calls)
    results = ab_step_times(model, wrapper, [_batch(), _batch()], warmup=1,
                            device='cpu')
    assert len(calls) == 2  # one supervised step per batch, no more
    assert list(model.supervisors) == [supervisor]  # put back
    assert [len(r['times']) for r in results.values()] == [1, 1]
    summary = summarize_ab(results, samples=2, tokens=50)
    sup, unsup = summary['supervised'], summary['unsupervised']
    assert summary['ratio']['step_time'] == pytest.approx(
        sup['median_step_s'] / unsup['median_step_s'])
    assert sup['samples_per_s'] == pytest.approx(2 / sup['median_step_s'])
    assert unsup['tokens_per_s'] == pytest.approx(
        50 / unsup['median_step_s'])


def _counting(method, calls):
    def counted(*args, **kwargs):
        calls.append('loss')
        return method(*args, **kwargs)
    return counted


def test_peak_memory_sees_an_allocation_on_cpu():
    with PeakMemory('cpu', interval=0.001) as before:
        pass
    with PeakMemory('cpu', interval=0.001) as during:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        time.sleep(0.05)  # the sampler looks every millisecond
        del block
    assert during.value - before.value > 48 * 2**20


def test_time_parts_times_every_part_and_the_optimizer():
    model, wrapper = _model_and_optimizer()
    parts = time_parts(model, wrapper,
                       StepShape(batch_size=2, text_tokens=10,
                                 supervised_tokens=4, image_size=32),
                       'cpu', repeats=1)
    assert set(parts) == {
        'vision_encoder', 'connector', 'llm', 'supervisors.0.adapters',
        'supervisors.0.vae_encode', 'supervisors.0.unet',
        'supervisors.0.vae_decode', 'supervisors.0.loss_network',
        'optimizer_step'}
    assert all(t['forward'] > 0 for name, t in parts.items()
               if name != 'optimizer_step')
    assert parts['optimizer_step']['backward'] > 0
    assert parts['llm']['backward'] > 0


def test_the_tool_measures_the_tiny_dsvlm(tmp_path, capsys):
    benchmark = load_tool('benchmark')
    options = [o for o in world_options(tmp_path / 'world', 4)
               if o.startswith(('tokenizer.', 'train_dataloader.'))]
    result = benchmark.main([
        'configs/tiny/dsvlm_tiny.py', '--steps', '2', '--warmup', '1',
        '--data-samples', '8', '--cfg-options', *options])
    text = capsys.readouterr().out
    assert 'supervised / unsupervised: step time' in text
    ab = result['ab']
    assert ab['ratio']['step_time'] == pytest.approx(
        ab['supervised']['median_step_s'] /
        ab['unsupervised']['median_step_s'])
    assert result['batch_size'] == 4
    assert result['data_samples_per_s'] > 0
    assert 'supervisors.0.unet' in result['parts']


def test_the_transformers_reference_computes_the_same_loss():
    """The comparison is like for like: transformers' LLaVA, built from our
    weights, gets our batch with the image token expanded and computes the
    same loss."""
    from dsvlm.profiling.hf_reference import compare_with_hf, hf_inputs
    model, _ = _model_and_optimizer()
    model.template = 'vicuna_v1'  # an exportable (chat) model
    batch = _batch(size=2, text=10)
    batch['inputs']['has_image'][1] = False  # a text-only row too
    batch['inputs']['input_ids'][1, 1] = 5
    result = compare_with_hf(model, batch, steps=1, device='cpu')
    assert result['loss_transformers'] == pytest.approx(
        result['loss_ours'], rel=1e-5)
    assert result['ratio'] == pytest.approx(
        result['ours_s'] / result['transformers_s'])
    expanded = hf_inputs(batch['inputs'], image_token_id=999,
                         num_image_tokens=16)
    assert (expanded['input_ids'][0] == 999).sum() == 16
    assert (expanded['input_ids'][1] == 999).sum() == 0
    assert expanded['pixel_values'].shape[0] == 1
    assert int(expanded['attention_mask'][1].sum()) == 11

