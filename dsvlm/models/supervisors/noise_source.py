"""Random numbers of a supervisor that a resumed run draws again.

The diffusion noise, timesteps and VAE posterior samples of a step come from
a generator seeded with ``(seed, draw count, rank)``; both numbers are a
buffer of the module, saved in every checkpoint (trainable-only ones
included: :func:`~dsvlm.models.checkpoint.training_state_names`).  A run
resumed from iteration N thus draws exactly what the uninterrupted run drew
from N on, which the global RNG (re-seeded by MMEngine on resume, and
advanced by whatever else draws from it) cannot give.
"""
import torch
from torch import nn


class CheckpointedNoise(nn.Module):
    """A per-draw seeded generator whose position is checkpointed.

    Args:
        seed: the base seed; None: ``torch.initial_seed()`` when built (the
            run's ``randomness.seed`` under MMEngine).
    """

    keep_in_checkpoints = True  # trainable-only checkpoints keep its state

    def __init__(self, seed=None):
        super().__init__()
        if seed is None:
            seed = torch.initial_seed()
        # [base seed, generators handed out so far]
        self.register_buffer('state', torch.tensor([seed % 2**62, 0]))

    @property
    def draws(self) -> int:
        return int(self.state[1])

    def next_generator(self, device) -> torch.Generator:
        """A generator on ``device`` for one step's draws; every call
        advances the count.  Ranks draw different numbers."""
        seed, draws = (int(x) for x in self.state)
        rank = (torch.distributed.get_rank()
                if torch.distributed.is_available()
                and torch.distributed.is_initialized() else 0)
        generator = torch.Generator(device=device)
        generator.manual_seed(hash((seed, draws, rank)) % 2**63)
        self.state[1] += 1
        return generator
