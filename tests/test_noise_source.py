"""CheckpointedNoise: a supervisor's random draws continue from a
checkpoint exactly, and its state travels in trainable-only checkpoints."""
import torch
from mmengine.registry import init_default_scope

from dsvlm.models.supervisors.noise_source import CheckpointedNoise
from dsvlm.registry import MODELS
from tests.model_factory import tiny_supervisor_cfg, tiny_vlm_cfg

init_default_scope('dsvlm')


def draws(noise, n):
    return [torch.randn(3, generator=noise.next_generator('cpu'))
            for _ in range(n)]


def test_a_loaded_state_continues_the_sequence():
    torch.manual_seed(0)
    original = CheckpointedNoise()
    first = draws(original, 2)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    later = draws(original, 2)
    torch.manual_seed(123)  # the global RNG plays no part
    restored = CheckpointedNoise(seed=original.seed)
    restored.load_state_dict(state)
    again = draws(restored, 2)
    assert all(torch.equal(a, b) for a, b in zip(later, again))
    # every step draws new numbers, and the seed matters
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(draws(CheckpointedNoise(seed=1), 1)[0],
                           draws(CheckpointedNoise(seed=2), 1)[0])


def test_the_state_is_in_trainable_only_checkpoints():
    model = MODELS.build(tiny_vlm_cfg(supervisors=[tiny_supervisor_cfg()]))
    state = model.state_dict()
    assert model.save_trainable_only
    assert 'supervisors.0.noise.count' in state
    assert not any('unet.conv_in' in k for k in state)  # frozen: left out
    # a checkpoint written before the state was saved still loads cleanly
    del state['supervisors.0.noise.count']
    result = model.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_the_seed_is_the_runs_at_the_first_draw():
    """Built before the runner seeds (or re-seeds on resume), the module
    takes the seed in force when training draws first."""
    torch.manual_seed(5)
    noise = CheckpointedNoise()
    torch.manual_seed(7)
    first = draws(noise, 1)[0]
    assert noise.seed == 7
    assert torch.equal(first, draws(CheckpointedNoise(seed=7), 1)[0])
