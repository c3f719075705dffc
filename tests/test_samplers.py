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
