"""LLaVA's modality- and length-grouped sampling
(``group_by_modality_length``)."""
import math
from typing import Iterator, List, Optional, Sequence

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler

from dsvlm.registry import DATA_SAMPLERS


def split_to_even_chunks(indices, lengths, num_chunks) -> List[List[int]]:
    """Split ``indices`` into ``num_chunks`` chunks of similar total length
    (LLaVA's greedy split; strided when they do not divide evenly)."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float('inf')
    return chunks


def length_grouped_indices(lengths, batch_size, world_size, generator,
                           shuffle=True, mega_batch_mult=1) -> List[int]:
    """Megabatches of ``mega_batch_mult * world_size * batch_size`` random
    indices, each sorted by decreasing length and cut into global batches
    of ``world_size * batch_size``, each split evenly over the ranks.

    With ``mega_batch_mult=1`` this is LLaVA's ``get_length_grouped_indices``
    (which, on one process, leaves the padding as it is).  A larger multiple
    (XTuner's ``mega_batch_mult``) puts samples of similar length into one
    batch and so cuts padding; the global batches are then shuffled, so that
    long and short ones alternate at random.
    """
    order = (torch.randperm(len(lengths), generator=generator).tolist()
             if shuffle else list(range(len(lengths))))
    size = world_size * batch_size
    mega = size * mega_batch_mult
    batches = []
    for start in range(0, len(order), mega):
        megabatch = sorted(order[start:start + mega],
                           key=lambda i: lengths[i], reverse=True)
        for first in range(0, len(megabatch), size):
            batches.append([i for chunk in split_to_even_chunks(
                megabatch[first:first + size], lengths, world_size)
                for i in chunk])
    if shuffle and mega_batch_mult > 1:
        # a trailing partial batch stays last
        full = batches if len(batches[-1]) == size else batches[:-1]
        perm = torch.randperm(len(full), generator=generator).tolist()
        batches = [full[i] for i in perm] + batches[len(full):]
    return [i for batch in batches for i in batch]


def modality_length_grouped_indices(lengths: Sequence[int], batch_size: int,
                                    world_size: int, generator,
                                    shuffle=True,
                                    mega_batch_mult=1) -> List[int]:
    """LLaVA's ``get_modality_length_grouped_indices``.

    ``lengths`` are positive for image samples and negative for text-only
    ones.  Every megabatch holds one modality, except the last, which merges
    the leftovers of both (as in LLaVA).
    """
    if any(length == 0 for length in lengths):
        raise ValueError('modality lengths must be non-zero (sign = modality)')
    if all(length > 0 for length in lengths) or all(length < 0
                                                    for length in lengths):
        return length_grouped_indices([abs(x) for x in lengths], batch_size,
                                      world_size, generator, shuffle,
                                      mega_batch_mult)
    size = world_size * batch_size
    groups = []
    for sign in (1, -1):
        indices = [i for i, x in enumerate(lengths) if x * sign > 0]
        group_lengths = [abs(lengths[i]) for i in indices]
        order = [indices[i] for i in length_grouped_indices(
            group_lengths, batch_size, world_size, generator, shuffle,
            mega_batch_mult)]
        groups.append([order[i:i + size] for i in range(0, len(order), size)])
    (*mm, last_mm), (*lang, last_lang) = groups
    megabatches = mm + lang
    if shuffle:
        perm = torch.randperm(len(megabatches), generator=generator).tolist()
        megabatches = [megabatches[i] for i in perm]
    megabatches.append(sorted(last_mm + last_lang))
    return [i for megabatch in megabatches for i in megabatch]


@DATA_SAMPLERS.register_module()
class LengthGroupedSampler(Sampler):
    """Groups samples by modality and length, as LLaVA's
    ``group_by_modality_length``, for one rank of a distributed run.

    All ranks compute the same global order (from ``seed`` and the epoch)
    and rank ``r`` takes the ``r``-th ``batch_size`` chunk of every
    megabatch, so the ``world_size`` batches of one step come from one
    megabatch.  ``batch_size`` is the per-device batch size (MMEngine builds
    samplers with ``dataset`` and ``seed`` only; in a config, leave it
    unset and :func:`dsvlm.engine.config.complete_config` copies the
    dataloader's).  With
    ``round_up`` the order is padded with its own first indices so that all
    ranks get the same number of samples (as MMEngine's ``DefaultSampler``).
    ``mega_batch_mult > 1`` sorts that many global batches at a time by
    length, which cuts padding (see :func:`length_grouped_indices`); the
    default 1 is LLaVA's grouping.  ``infinite=True`` goes on from one
    epoch's order to the next's, for ``IterBasedTrainLoop``: MMEngine's
    loop otherwise restarts the dataloader at every epoch end, and sleeps
    2 s each time.  The dataset must have ``modality_lengths``.
    """

    def __init__(self, dataset, batch_size: int, seed: Optional[int] = None,
                 shuffle: bool = True, round_up: bool = True,
                 mega_batch_mult: int = 1, infinite: bool = False):
        if not hasattr(dataset, 'modality_lengths'):
            raise TypeError(f'{type(dataset).__name__} has no '
                            '`modality_lengths`, which LengthGroupedSampler '
                            'needs')
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = sync_random_seed() if seed is None else seed
        self.shuffle = shuffle
        self.round_up = round_up
        if mega_batch_mult < 1:
            raise ValueError(
                f'mega_batch_mult must be >= 1, got {mega_batch_mult}')
        self.mega_batch_mult = mega_batch_mult
        self.infinite = infinite
        self.epoch = 0
        n = len(dataset)
        if round_up:
            self.total_size = math.ceil(n / self.world_size) * self.world_size
        else:
            self.total_size = n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_indices(self) -> List[int]:
        """The order of all ranks together, padded to ``total_size``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        indices = modality_length_grouped_indices(
            self.dataset.modality_lengths, self.batch_size, self.world_size,
            generator, self.shuffle, self.mega_batch_mult)
        while len(indices) < self.total_size:
            indices += indices[:self.total_size - len(indices)]
        return indices

    def _rank_indices(self) -> List[int]:
        indices = self.global_indices()
        size = self.world_size * self.batch_size
        mine = []
        for start in range(0, len(indices), size):
            megabatch = indices[start:start + size]
            bounds = [len(megabatch) * r // self.world_size
                      for r in range(self.world_size + 1)]
            mine.extend(megabatch[bounds[self.rank]:bounds[self.rank + 1]])
        return mine

    def __iter__(self) -> Iterator[int]:
        if not self.infinite:
            yield from self._rank_indices()
            return
        epoch = self.epoch
        while True:
            self.epoch = epoch
            yield from self._rank_indices()
            epoch += 1

    def __len__(self) -> int:
        n, size = self.total_size, self.world_size * self.batch_size
        full, rest = divmod(n, size)
        return full * self.batch_size + (
            (rest * (self.rank + 1)) // self.world_size
            - (rest * self.rank) // self.world_size)
