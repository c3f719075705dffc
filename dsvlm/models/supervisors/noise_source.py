"""Random numbers of a supervisor that a resumed run draws again.

The diffusion noise, timesteps and VAE posterior samples of a training step
come from a generator seeded with ``(seed, step count * world size +
rank)``: the ranks draw different numbers, and each micro-batch the numbers
its position in the global order would draw in one process (with the
interleaving sampler order and one micro-batch per step, W ranks draw what
one process accumulating W micro-batches draws).  The count is a
buffer of the module, saved in every checkpoint (trainable-only ones
included: :func:`~dsvlm.models.checkpoint.training_state_names`); the seed
is the run's (``torch.initial_seed()`` at the first draw: MMEngine's
``randomness.seed``, restored on resume, different per rank only with
``diff_rank_seed``).  A run resumed from iteration N thus draws exactly what
the uninterrupted run drew from N on, which the global RNG (re-seeded on
resume, and advanced by whatever else draws from it) cannot give.  Every
rank counts every step, batches without images included, so the ranks'
counts agree and any rank's checkpoint resumes all of them.
"""
from typing import Optional

import torch
from torch import nn


class CheckpointedNoise(nn.Module):
    """A per-step seeded generator whose position is checkpointed.

    Args:
        seed: the base seed; None: ``torch.initial_seed()`` at the first
            draw.
    """

    keep_in_checkpoints = True  # trainable-only checkpoints keep its count

    def __init__(self, seed: Optional[int] = None):
        super().__init__()
        self.seed = seed
        self.register_buffer('count', torch.zeros((), dtype=torch.long))

    def next_generator(self, device) -> Optional[torch.Generator]:
        """A generator on ``device`` for one step's draws; every call
        advances the count.  None on the meta device (FLOP counting), which
        has no generator and no values to draw."""
        if torch.device(device).type == 'meta':
            return None
        if self.seed is None:
            self.seed = torch.initial_seed()
        rank, world_size = _rank_and_world_size()
        generator = torch.Generator(device=device)
        generator.manual_seed(
            hash((self.seed, int(self.count) * world_size + rank)) % 2**63)
        self.count += 1
        return generator


def _rank_and_world_size():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
