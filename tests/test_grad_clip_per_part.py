"""clip_grad=dict(max_norm, per_part=True): each part of the model is
clipped to max_norm on its own (TrainableOptimWrapperConstructor names the
part of each parameter group)."""
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope
from torch import nn

from dsvlm.engine.optim_wrappers import FiniteStepOptimWrapper
from dsvlm.registry import OPTIM_WRAPPER_CONSTRUCTORS

init_default_scope('dsvlm')


class TwoParts(nn.Module):
    """A VLM-like model: ``llm`` and a supervisor, plus a frozen part."""

    def __init__(self):
        super().__init__()
        self.llm = nn.Linear(3, 2)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.supervisors = nn.ModuleList([nn.Linear(3, 4)])


def build(model, clip_grad, constructor='TrainableOptimWrapperConstructor'):
    MessageHub.get_instance('per-part-clip')  # the runner's, in a run
    cfg = dict(type='FiniteStepOptimWrapper',
               optimizer=dict(type='SGD', lr=1.0), clip_grad=clip_grad)
    if constructor is None:
        from mmengine.optim import build_optim_wrapper
        return build_optim_wrapper(model, cfg)
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=constructor, optim_wrapper_cfg=cfg))(model)


def set_grads(model, llm_scale, supervisor_scale):
    for p in model.llm.parameters():
        p.grad = torch.full_like(p, llm_scale)
    for p in model.supervisors.parameters():
        p.grad = torch.full_like(p, supervisor_scale)


def expected_grads(params, max_norm):
    """clip_grad_norm_'s rule, computed here: scale by
    max_norm / (norm + 1e-6) where that is below 1."""
    norm = torch.cat([p.grad.flatten() for p in params]).norm()
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    return [p.grad * scale for p in params], norm


def test_each_part_is_clipped_on_its_own():
    torch.manual_seed(0)
    model = TwoParts()
    wrapper = build(model, dict(max_norm=1.0, per_part=True))
    assert isinstance(wrapper, FiniteStepOptimWrapper)
    parts = {g['clip_part'] for g in wrapper.optimizer.param_groups}
    assert parts == {'llm', 'supervisors'}  # the frozen part is left out
    set_grads(model, 0.1, 10.0)  # small LLM gradients, large supervisor's
    llm, llm_norm = expected_grads(list(model.llm.parameters()), 1.0)
    sup, sup_norm = expected_grads(list(model.supervisors.parameters()), 1.0)
    bad, norm = wrapper._check_gradients()
    assert not bad
    # the LLM's gradients are untouched by the supervisor's large ones
    for p, g in zip(model.llm.parameters(), llm):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(model.supervisors.parameters(), sup):
        torch.testing.assert_close(p.grad, g)
    assert float(llm_norm) < 1.0 and torch.equal(
        model.llm.weight.grad, torch.full_like(model.llm.weight, 0.1))
    torch.testing.assert_close(norm, torch.stack([llm_norm, sup_norm]).norm())
    hub = MessageHub.get_current_instance()
    assert hub.get_scalar('train/grad_norm_supervisors').current() == \
        pytest.approx(float(sup_norm))


def test_one_global_clip_without_per_part():
    torch.manual_seed(0)
    model = TwoParts()
    wrapper = build(model, dict(max_norm=1.0))
    set_grads(model, 0.1, 10.0)
    params = list(model.llm.parameters()) + list(
        model.supervisors.parameters())
    clipped, _ = expected_grads(params, 1.0)
    wrapper._check_gradients()
    for p, g in zip(params, clipped):
        torch.testing.assert_close(p.grad, g)
    assert float(model.llm.weight.grad[0, 0]) < 0.01  # shrunk 100-fold


def test_per_part_needs_the_constructor_that_names_parts():
    with pytest.raises(ValueError, match="constructor='TrainableOptimWrap"):
        build(TwoParts(), dict(max_norm=1.0, per_part=True),
              constructor=None)
