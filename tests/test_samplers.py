"""LengthGroupedSampler: LLaVA's group_by_modality_length, per rank."""
import pytest
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DefaultScope

import dsvlm.datasets.samplers as samplers
from dsvlm.datasets.samplers import LengthGroupedSampler, split_to_even_chunks


class FakeDataset:
    def __init__(self, modality_lengths):
        self.modality_lengths = modality_lengths

    def __len__(self):
        return len(self.modality_lengths)


def lengths(num_image, num_text):
    # distinct lengths; image samples positive, text-only negative
    return ([5 + i for i in range(num_image)] +
            [-(3 + i) for i in range(num_text)])


def per_rank(monkeypatch, dataset, world_size, batch_size, seed=0, epoch=0,
             **kwargs):
    result = []
    for rank in range(world_size):
        monkeypatch.setattr(samplers, 'get_dist_info',
                            lambda r=rank: (r, world_size))
        sampler = LengthGroupedSampler(dataset, batch_size, seed=seed,
                                       **kwargs)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        result.append(indices)
    return result


def test_split_to_even_chunks_greedy_by_length():
    # sorted by length: each index goes to the chunk with the smallest total
    lengths_ = [10, 9, 8, 1, 1, 1]
    assert split_to_even_chunks([0, 1, 2, 3, 4, 5], lengths_, 2) == [
        [0, 3, 4], [1, 2, 5]]
    assert split_to_even_chunks([0, 1, 2], [3, 2, 1], 2) == [[0, 2], [1]]


@pytest.mark.parametrize('world_size,batch_size', [(1, 4), (2, 3), (4, 2)])
def test_each_index_once_per_epoch_and_megabatches_single_modality(
        monkeypatch, world_size, batch_size):
    modality = lengths(num_image=21, num_text=19)  # 40 samples
    ranks = per_rank(monkeypatch, FakeDataset(modality), world_size,
                     batch_size)
    assert sorted(i for r in ranks for i in r) == list(range(40))
    assert len({len(r) for r in ranks}) == 1  # same number of steps
    steps = len(ranks[0]) // batch_size
    megabatches = [
        [i for r in ranks for i in r[k * batch_size:(k + 1) * batch_size]]
        for k in range(steps)]
    # every full megabatch holds one modality; LLaVA merges the two
    # modalities' leftovers into the final one
    full_image = 21 // (world_size * batch_size)
    full_text = 19 // (world_size * batch_size)
    single = megabatches[:full_image + full_text]
    assert all(len({modality[i] > 0 for i in mb}) == 1 for mb in single)
    assert sum(all(modality[i] > 0 for i in mb) for mb in single) == full_image


def test_rank_batch_of_a_megabatch_is_length_balanced(monkeypatch):
    modality = [100, 1, 1, 1, 90, 1, 1, 1]  # one megabatch of 2 ranks x 4
    ranks = per_rank(monkeypatch, FakeDataset(modality), 2, 4)
    # the two long samples land on different ranks
    assert {modality[r[0]] for r in ranks} == {100, 90}


def test_order_depends_on_seed_and_epoch_only(monkeypatch):
    dataset = FakeDataset(lengths(30, 30))
    first = per_rank(monkeypatch, dataset, 2, 4, seed=1, epoch=0)
    assert per_rank(monkeypatch, dataset, 2, 4, seed=1, epoch=0) == first
    assert per_rank(monkeypatch, dataset, 2, 4, seed=1, epoch=1) != first
    assert per_rank(monkeypatch, dataset, 2, 4, seed=2, epoch=0) != first


def test_round_up_pads_to_equal_lengths(monkeypatch):
    dataset = FakeDataset(lengths(4, 3))  # 7 samples on 2 ranks
    ranks = per_rank(monkeypatch, dataset, 2, 2)
    assert [len(r) for r in ranks] == [4, 4]
    flat = [i for r in ranks for i in r]
    assert set(flat) == set(range(7)) and len(flat) == 8
    exact = per_rank(monkeypatch, dataset, 2, 2, round_up=False)
    assert sorted(i for r in exact for i in r) == list(range(7))


def test_single_modality_dataset(monkeypatch):
    ranks = per_rank(monkeypatch, FakeDataset(lengths(10, 0)), 2, 2)
    assert sorted(i for r in ranks for i in r) == list(range(10))


def test_bad_datasets():
    with pytest.raises(ValueError, match='non-zero'):
        list(LengthGroupedSampler(FakeDataset([3, 0, -2]), 2, seed=0))
    with pytest.raises(TypeError, match='modality_lengths'):
        LengthGroupedSampler([1, 2, 3], 2, seed=0)


def test_built_like_the_runner_builds_samplers():
    dataset = FakeDataset(lengths(6, 6))
    with DefaultScope.overwrite_default_scope('dsvlm'):
        sampler = MMENGINE_DATA_SAMPLERS.build(
            dict(type='LengthGroupedSampler', batch_size=2),
            default_args=dict(dataset=dataset, seed=3))
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.seed == 3 and sorted(sampler) == list(range(12))


def batches_of(indices, batch_size):
    return [indices[i:i + batch_size]
            for i in range(0, len(indices), batch_size)]


def test_mega_batch_mult_puts_similar_lengths_together(monkeypatch):
    # 20 image samples of distinct lengths, one megabatch of 5 batches of 4
    modality = [5 + (7 * i) % 20 for i in range(20)]
    [order] = per_rank(monkeypatch, FakeDataset(modality), 1, 4,
                       mega_batch_mult=5)
    assert sorted(order) == list(range(20))
    ranges = [(min(modality[i] for i in b), max(modality[i] for i in b))
              for b in batches_of(order, 4)]
    # the batches cut the sorted lengths into blocks that do not interleave
    for lo, hi in ranges:
        assert all(h < lo or l > hi for l, h in ranges if (l, h) != (lo, hi))
    assert sorted(ranges) == [(5 + 4 * k, 8 + 4 * k) for k in range(5)]
    # ...which pads less than LLaVA's grouping (a batch pads to its longest)
    [llava] = per_rank(monkeypatch, FakeDataset(modality), 1, 4)

    def padded(indices):
        return sum(4 * max(modality[i] for i in b)
                   for b in batches_of(indices, 4))
    assert padded(order) < padded(llava)


def test_mega_batch_mult_shuffles_the_batches(monkeypatch):
    modality = list(range(1, 41))
    orders = {tuple(per_rank(monkeypatch, FakeDataset(modality), 1, 4,
                             seed=s, mega_batch_mult=10)[0])
              for s in range(4)}
    firsts = {max(modality[i] for i in order[:4]) for order in orders}
    assert len(orders) == 4
    # not always the longest batch first, as a plain sort would give
    assert len(firsts) > 1


def test_mega_batch_mult_keeps_ranks_and_modalities(monkeypatch):
    modality = lengths(num_image=21, num_text=19)
    ranks = per_rank(monkeypatch, FakeDataset(modality), 2, 3,
                     mega_batch_mult=3)
    assert sorted(i for r in ranks for i in r) == list(range(40))
    steps = len(ranks[0]) // 3
    megabatches = [[i for r in ranks for i in r[k * 3:(k + 1) * 3]]
                   for k in range(steps)]
    single = megabatches[:21 // 6 + 19 // 6]
    assert all(len({modality[i] > 0 for i in mb}) == 1 for mb in single)
    with pytest.raises(ValueError, match='mega_batch_mult'):
        LengthGroupedSampler(FakeDataset(modality), 2, seed=0,
                             mega_batch_mult=0)


def test_infinite_goes_on_with_the_next_epochs_orders(monkeypatch):
    import itertools
    dataset = FakeDataset(lengths(9, 5))
    finite = [per_rank(monkeypatch, dataset, 2, 3, epoch=e) for e in range(3)]
    monkeypatch.setattr(samplers, 'get_dist_info', lambda: (1, 2))
    sampler = LengthGroupedSampler(dataset, 3, seed=0, infinite=True)
    n = len(sampler)
    stream = list(itertools.islice(iter(sampler), 3 * n))
    # rank 1 of epochs 0, 1, 2, back to back, as the finite sampler gives
    assert stream == finite[0][1] + finite[1][1] + finite[2][1]
