"""load_dataset: spec strings, validation split, statistics, the tensor cache, normalisation choices."""

import json
import os

import pytest
import torch
from datafakes import write_cifar10_folder, write_image_folder

from fspkd.core.errors import FspkdError
from fspkd.data import cache as cache_module
from fspkd.data import load_dataset, parse_normalize
from fspkd.data import spec as spec_module
from fspkd.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def small_synthetic():
    return load_dataset("synthetic:600,100")


@pytest.mark.parametrize("spec", ["nope", "cifar10", "mnist:/tmp/x", 42, "imagefolder"])
def test_bad_spec(spec):
    with pytest.raises(FspkdError, match="spec"):
        load_dataset(spec)


def test_empty_and_missing_path(tmp_path):
    with pytest.raises(FspkdError, match="path after ':' is empty"):
        load_dataset("cifar10:")
    with pytest.raises(FspkdError, match="nowhere.*no such file"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")


def test_file_that_is_not_an_archive(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(FspkdError, match=r"data\.zip: expected a folder or"):
        load_dataset(f"cifar10:{tmp_path / 'data.zip'}", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("val_split", [-0.1, 1.0, 1.5, "0.1", True, float("nan")])
def test_bad_val_split(val_split):
    with pytest.raises(FspkdError, match="val_split"):
        load_dataset("synthetic:100", val_split=val_split)


@pytest.mark.parametrize("image_size", [0, -3, 2.5, "32"])
def test_bad_image_size(image_size):
    with pytest.raises(FspkdError, match="image_size"):
        load_dataset("synthetic:100", image_size=image_size)


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:5", "synthetic:1,2,3"])
def test_bad_synthetic_sizes(spec):
    with pytest.raises(FspkdError, match="synthetic size"):
        load_dataset(spec)


def test_builtin_names_mean_synthetic(monkeypatch):
    requested_sizes = []

    def tiny_synthetic(num_train, num_test):
        requested_sizes.append((num_train, num_test))
        return make_synthetic(20, 10)
    monkeypatch.setattr(spec_module, "make_synthetic", tiny_synthetic)
    for spec in ["", "builtin", "synthetic", " Synthetic "]:
        assert load_dataset(spec).name == "synthetic"
    assert requested_sizes == [(10_000, 2_000)] * 4


def test_synthetic_splits(small_synthetic):
    splits = small_synthetic
    assert splits.train.images.shape == (600, 3, 32, 32) and splits.test.images.shape == (100, 3, 32, 32)
    assert splits.num_classes == 10 and len(splits.classes) == 10 and splits.default_augment
    assert torch.bincount(splits.train.labels).tolist() == [60] * 10


def test_val_split_is_stratified_reproducible_and_disjoint():
    first = load_dataset("synthetic:600,10", val_split=0.2, seed=3)
    again = load_dataset("synthetic:600,10", val_split=0.2, seed=3)
    other = load_dataset("synthetic:600,10", val_split=0.2, seed=4)
    assert torch.equal(first.val.images, again.val.images) and torch.equal(first.train.labels, again.train.labels)
    assert not torch.equal(first.val.images, other.val.images)
    assert len(first.val) == 120 and len(first.train) == 480
    assert torch.bincount(first.val.labels).tolist() == [12] * 10
    whole = load_dataset("synthetic:600,10").train.images.flatten(1)
    keys = lambda images: {bytes(row.numpy()) for row in images.flatten(1)}
    assert keys(first.val.images).isdisjoint(keys(first.train.images))
    assert keys(first.val.images) | keys(first.train.images) == keys(whole)


def test_mean_std_are_train_statistics(small_synthetic):
    scaled = small_synthetic.train.images.double() / 255
    expected_mean = scaled.mean(dim=(0, 2, 3))
    expected_std = scaled.permute(1, 0, 2, 3).flatten(1).std(dim=1, unbiased=False)
    assert torch.allclose(torch.tensor(small_synthetic.mean, dtype=torch.float64), expected_mean, atol=1e-9)
    assert torch.allclose(torch.tensor(small_synthetic.std, dtype=torch.float64), expected_std, atol=1e-9)


def test_synthetic_is_deterministic():
    first = load_dataset("synthetic:2000,0")
    second = load_dataset("synthetic:2000,0")
    assert torch.equal(first.train.images, second.train.images) and first.test is None


def test_synthetic_classes_differ(small_synthetic):
    # Class-mean images differ: the label is visible in the pixels, not noise alone.
    images, labels = small_synthetic.train.images.float(), small_synthetic.train.labels
    means = torch.stack([images[labels == label].mean(0) for label in range(10)])
    centre = means[:, :, 8:24, 8:24].flatten(1)
    assert torch.cdist(centre, centre).fill_diagonal_(1e9).min() > 1.0


# ---- cache ----

def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    written = write_cifar10_folder(tmp_path / "src")
    cache_dir = tmp_path / "cache"
    first = load_dataset(f"cifar10:{written['folder']}", cache_dir=cache_dir)
    entries = sorted(path.suffix for path in cache_dir.iterdir())
    assert entries == [".json", ".safetensors"]
    meta = json.loads(next(cache_dir.glob("*.json")).read_text())
    assert meta["classes"][0] == "airplane" and meta["has_test"]

    def no_decoding(tree, size):
        raise AssertionError("decoded although cached")
    monkeypatch.setitem(spec_module.READERS, "cifar10", no_decoding)
    second = load_dataset(f"cifar10:{written['folder']}", cache_dir=cache_dir)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert second.classes == first.classes

    batch = written["folder"] / "data_batch_1"
    os.utime(batch, ns=(batch.stat().st_atime_ns, batch.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_dataset(f"cifar10:{written['folder']}", cache_dir=cache_dir)
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_dataset(f"cifar10:{written['folder']}", image_size=16, cache_dir=cache_dir)


def test_cache_without_test_split_and_env_default(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "set", ["a", "b"], per_class=2)
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "env-cache"))
    first = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    second = load_dataset(f"imagefolder:{tmp_path / 'set'}")
    assert len(list((tmp_path / "env-cache").glob("imagefolder-*.safetensors"))) == 1
    assert second.test is None and torch.equal(first.train.images, second.train.images)


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    written = write_cifar10_folder(tmp_path / "src")
    cache_dir = tmp_path / "cache"
    first = load_dataset(f"cifar10:{written['folder']}", cache_dir=cache_dir)
    next(cache_dir.glob("*.safetensors")).write_bytes(b"garbage")
    second = load_dataset(f"cifar10:{written['folder']}", cache_dir=cache_dir)
    assert torch.equal(first.train.images, second.train.images)
    assert not list(cache_dir.glob("*.tmp"))


def test_cache_key_depends_on_inputs(tmp_path):
    source = tmp_path / "file.tar.gz"
    source.write_bytes(b"x")
    key = cache_module.cache_key(source, "cifar10", 32)
    assert key == cache_module.cache_key(source, "cifar10", 32)
    assert key != cache_module.cache_key(source, "cifar100", 32)
    assert key != cache_module.cache_key(source, "cifar10", 64)
    source.write_bytes(b"xy")
    assert key != cache_module.cache_key(source, "cifar10", 32)


# ---- normalisation ----

def test_parse_normalize(small_synthetic):
    assert parse_normalize("dataset", small_synthetic) == (small_synthetic.mean, small_synthetic.std)
    assert parse_normalize("imagenet", small_synthetic) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert parse_normalize("none", small_synthetic) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert parse_normalize("0.5, 0.4,0.3:0.2,0.25,0.3", small_synthetic) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


@pytest.mark.parametrize("text", ["imagnet", "1,2:3,4", "1,2,3", "1,2,3:0,1,1", "a,b,c:1,1,1", "1,2,3:4,5,6:7"])
def test_parse_normalize_rejects(small_synthetic, text):
    with pytest.raises(FspkdError, match=f"normalisation '{text}'".replace("(", r"\(")):
        parse_normalize(text, small_synthetic)
