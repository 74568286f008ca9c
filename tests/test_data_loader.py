"""BatchLoader: shuffling, augmentation, normalisation, resumption, sharding, evaluation passes."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from fspkd.core.errors import FspkdError
from fspkd.data import BatchLoader
from fspkd.data.augment import shifted_crops

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (96, 3, 8, 8), dtype=torch.uint8, generator=generator)  # 0 marks padding
    labels = torch.arange(96)  # label = sample index, so batches say which samples they hold
    return images, labels


def _loader(data, **overrides):
    options = dict(batch_size=16, mean=MEAN, std=STD, train=True, augment=True, flip=True, pad=2, seed=5)
    options.update(overrides)
    return BatchLoader(*data, **options)


def _take(loader, count):
    return list(itertools.islice(iter(loader), count))


def _unnormalise(x):
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round()


def test_batches_shapes_types_and_range(data):
    loader = _loader(data)
    assert len(loader) == 6
    for x, y in _take(loader, 7):
        assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        pixels = _unnormalise(x)
        assert pixels.min() >= 0 and pixels.max() <= 255


def test_each_epoch_is_a_permutation_and_epochs_differ(data):
    epochs = [torch.cat([y for _, y in batches]) for batches in
              (lambda b: (b[:6], b[6:12]))(_take(_loader(data), 12))]
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(96))
    assert not torch.equal(epochs[0], epochs[1])


def test_same_seed_same_batches_other_seed_differs(data):
    first, again, other = (_take(_loader(data, seed=seed), 8) for seed in (5, 5, 6))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))


def test_resume_gives_the_same_future_batches(data):
    reference = _take(_loader(data), 15)
    interrupted = _loader(data)
    _take(interrupted, 9)  # stop mid-way through the second epoch
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batch": 3}
    resumed = _loader(data)
    resumed.load_state_dict(state)
    for (x, y), (x_ref, y_ref) in zip(_take(resumed, 6), reference[9:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_resume_at_epoch_boundary(data):
    reference = _take(_loader(data), 8)
    loader = _loader(data)
    _take(loader, 6)
    resumed = _loader(data)
    resumed.load_state_dict(loader.state_dict())
    assert torch.equal(next(iter(resumed))[1], reference[6][1])


def test_iterating_again_continues(data):
    loader = _loader(data)
    reference = _take(_loader(data), 4)
    _take(loader, 2)
    assert torch.equal(next(iter(loader))[1], reference[2][1])


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_cover_each_sample_once_per_epoch(data, world_size):
    whole = _take(_loader(data), 6)
    shards = [_take(_loader(data, rank=rank, world_size=world_size), 6) for rank in range(world_size)]
    for batch_index in range(6):
        pieces = [shard[batch_index] for shard in shards]
        assert all(len(y) == 16 // world_size for _, y in pieces)
        # The ranks' pieces, side by side, are exactly the single-process global batch, crops included.
        assert torch.equal(torch.cat([y for _, y in pieces]), whole[batch_index][1])
        assert torch.equal(torch.cat([x for x, _ in pieces]), whole[batch_index][0])
    seen = torch.cat([y for shard in shards for _, y in shard])
    assert sorted(seen.tolist()) == list(range(96))


def test_drops_last_incomplete_batch(data):
    loader = _loader(data, batch_size=40)
    assert len(loader) == 2
    labels = torch.cat([y for _, y in _take(loader, 2)])
    assert len(labels) == 80 and len(set(labels.tolist())) == 80


def test_crops_are_shifted_windows_of_the_padded_image(data):
    images, _ = data
    pad = 2
    padded = F.pad(images, (pad,) * 4)
    for x, y in _take(_loader(data, flip=False, pad=pad), 6):
        pixels = _unnormalise(x).to(torch.uint8)
        for crop, index in zip(pixels, y.tolist()):
            windows = [padded[index, :, dy:dy + 8, dx:dx + 8]
                       for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
            assert any(torch.equal(crop, window) for window in windows)


def test_flip_and_crop_offsets_all_occur(data):
    images, _ = data
    pad = 2
    padded = F.pad(images, (pad,) * 4)
    offsets, flips = set(), set()
    for x, y in _take(_loader(data, pad=pad, batch_size=96), 12):
        pixels = _unnormalise(x).to(torch.uint8)
        for crop, index in zip(pixels, y.tolist()):
            for flipped, dy, dx in itertools.product((False, True), range(5), range(5)):
                window = padded[index, :, dy:dy + 8, dx:dx + 8]
                if torch.equal(crop, window.flip(-1) if flipped else window):
                    offsets.add((dy, dx))
                    flips.add(flipped)
                    break
            else:
                raise AssertionError("a crop matched no (flipped) window of the padded image")
    assert len(offsets) == 25 and flips == {False, True}


@pytest.mark.parametrize("pad", [3, 8])  # 8: more padding than image, some windows are all zeros
def test_shifted_crops_match_reference(pad):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (50, 3, 6, 7), dtype=torch.uint8, generator=generator)
    indices = torch.randint(0, 50, (300,), generator=generator)
    offset_y = torch.randint(0, 2 * pad + 1, (300,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (300,), generator=generator)
    flips = torch.rand(300, generator=generator) < 0.5
    padded = F.pad(images, (pad,) * 4)
    crops = [padded[i, :, oy:oy + 6, ox:ox + 7]
             for i, oy, ox in zip(indices.tolist(), offset_y.tolist(), offset_x.tolist())]
    assert torch.equal(shifted_crops(images, indices, offset_y, offset_x, pad), torch.stack(crops))
    mirrored = torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips.tolist())])
    assert torch.equal(shifted_crops(images, indices, offset_y, offset_x, pad, flips), mirrored)


def test_no_augmentation_keeps_images(data):
    images, _ = data
    for x, y in _take(_loader(data, augment=False), 6):
        assert torch.equal(_unnormalise(x).to(torch.uint8), images[y])


def test_normalisation_values(data):
    images, labels = data
    x, y = next(iter(_loader(data, train=False, augment=False)))
    expected = (images[:16].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, labels[:16])


def test_channels_last(data):
    x, _ = next(iter(_loader(data, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_eval_is_one_ordered_pass_with_partial_batch(data):
    loader = _loader(data, train=False, batch_size=40)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [40, 40, 16] and len(loader) == 3
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(96))
    assert len(list(loader)) == 3  # a second pass starts again


def test_eval_sharding_covers_everything_once(data):
    world_size = 4
    shards = [list(_loader(data, train=False, batch_size=40, rank=rank, world_size=world_size))
              for rank in range(world_size)]
    assert [len(y) for _, y in shards[0]] == [10, 10, 4]
    seen = torch.cat([y for shard in shards for _, y in shard])
    assert sorted(seen.tolist()) == list(range(96))


def test_eval_sharding_tiny_remainder_leaves_empty_shares_out():
    images, labels = torch.zeros(9, 3, 4, 4, dtype=torch.uint8), torch.arange(9)
    sizes = [[len(y) for _, y in BatchLoader(images, labels, 8, mean=MEAN, std=STD, train=False, augment=False,
                                             rank=rank, world_size=4)] for rank in range(4)]
    assert sizes == [[2, 1], [2], [2], [2]]


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=18, world_size=4), "divide evenly"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(world_size=0), "world_size"),
    (dict(batch_size=200), "larger than"),
    (dict(pad=-1), "pad"),
    (dict(seed=-1), "seed"),
    (dict(mean=(0.5, 0.5)), "mean"),
    (dict(std=(1, 0, 1)), "std"),
])
def test_bad_arguments(data, overrides, message):
    with pytest.raises(FspkdError, match=message):
        _loader(data, **overrides)


def test_bad_tensors():
    with pytest.raises(FspkdError, match="uint8"):
        BatchLoader(torch.zeros(4, 3, 4, 4), torch.arange(4), 2, mean=MEAN, std=STD, train=True, augment=False)
    with pytest.raises(FspkdError, match="labels"):
        BatchLoader(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.arange(3), 2, mean=MEAN, std=STD,
                    train=True, augment=False)


@pytest.mark.parametrize("state", [{}, {"epoch": 0}, {"epoch": 0, "batch": 99}, {"epoch": -1, "batch": 0}, None])
def test_bad_state(data, state):
    with pytest.raises(FspkdError, match="loader state"):
        _loader(data).load_state_dict(state)
