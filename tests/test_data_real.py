"""The real CIFAR-10 JPEG archive from the shared data folder (skipped when it is not there).

It is decoded once per session into a temporary cache; the other tests reuse that result.
"""


import pytest
import torch
from datafakes import CIFAR10_CLASSES, shared_data_dir

from fspkd.data import BatchLoader, load_dataset, spec


@pytest.fixture(scope="module")
def cifar_archive():
    shared = shared_data_dir()
    if shared is None or not (shared / "cifar10-train-jpg.tar.gz").is_file():
        pytest.skip("shared cifar10-train-jpg.tar.gz not available")
    return shared / "cifar10-train-jpg.tar.gz"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fspkd-cache")


@pytest.fixture(scope="module")
def cifar(cifar_archive, cache_dir):
    return load_dataset(f"cifar10:{cifar_archive}", val_split=0.1, seed=0, cache_dir=cache_dir)


def test_real_cifar10_jpg_archive(cifar):
    assert cifar.classes == CIFAR10_CLASSES and cifar.test is None
    assert cifar.train.images.shape == (45_000, 3, 32, 32) and len(cifar.val) == 5_000
    assert torch.bincount(cifar.val.labels).tolist() == [500] * 10
    assert all(0.4 < mean < 0.55 for mean in cifar.mean) and all(0.2 < std < 0.3 for std in cifar.std)


def test_real_cifar10_loads_from_cache_without_decoding(cifar, cifar_archive, cache_dir, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("the cached tensors should have been used")

    monkeypatch.setitem(spec.READERS, "cifar10", no_decoding)
    again = load_dataset(f"cifar10:{cifar_archive}", val_split=0.1, seed=0, cache_dir=cache_dir)
    assert torch.equal(again.val.images, cifar.val.images)


def test_real_cifar10_epoch_augmentation(cifar):
    loader = BatchLoader(cifar.train.images, cifar.train.labels, 128, mean=cifar.mean, std=cifar.std,
                         train=True, augment=True, flip=True)
    x, y = next(iter(loader))  # prepares (augments) the whole first epoch
    assert x.shape == (128, 3, 32, 32) and len(loader) == 45_000 // 128
    assert torch.isin(y, cifar.train.labels).all() and x.abs().max() < 10
