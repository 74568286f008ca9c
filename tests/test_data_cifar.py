"""CIFAR-10/100 readers: official python archive and folder, image-folder exports, hostile and broken files."""

import numpy as np
import pytest
import torch
from datafakes import (
    CIFAR10_CLASSES,
    crafted_pickle,
    make_tar_gz,
    make_tar_gz_of_contents,
    write_cifar10_folder,
    write_cifar100_folder,
    write_image_folder,
)

from fspkd.core.errors import FspkdError
from fspkd.data import load_dataset


@pytest.fixture
def cifar10_folder(tmp_path):
    return write_cifar10_folder(tmp_path / "src")


def _assert_matches(image_set, pixels, labels):
    assert image_set.images.dtype == torch.uint8 and image_set.images.is_contiguous()
    assert image_set.labels.dtype == torch.int64
    assert torch.equal(image_set.images, torch.from_numpy(pixels))
    assert image_set.labels.tolist() == list(labels)


@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar10_python_format(tmp_path, cifar10_folder, as_archive):
    path = cifar10_folder["folder"]
    if as_archive:
        path = make_tar_gz(path, tmp_path / "cifar-10-python.tar.gz")
    splits = load_dataset(f"cifar10:{path}", cache_dir=tmp_path / "cache")
    _assert_matches(splits.train, *cifar10_folder["train"])
    _assert_matches(splits.test, *cifar10_folder["test"])
    assert splits.classes == CIFAR10_CLASSES and splits.num_classes == 10
    assert splits.name == "cifar10" and splits.default_augment and splits.val is None


def test_cifar10_parent_folder_is_accepted(tmp_path, cifar10_folder):
    splits = load_dataset(f"cifar10:{tmp_path / 'src'}", cache_dir=tmp_path / "cache")
    assert len(splits.train) == 20


def test_cifar100_fine_labels_and_no_augmentation(tmp_path):
    written = write_cifar100_folder(tmp_path / "src")
    archive = make_tar_gz(written["folder"], tmp_path / "cifar-100-python.tar.gz")
    splits = load_dataset(f"cifar100:{archive}", cache_dir=tmp_path / "cache")
    _assert_matches(splits.train, *written["train"])
    _assert_matches(splits.test, *written["test"])
    assert splits.num_classes == 100 and splits.classes[5] == "class005"
    assert not splits.default_augment


def test_cifar10_as_image_folder_archive_without_test(tmp_path):
    write_image_folder(tmp_path / "jpg", CIFAR10_CLASSES, per_class=2, suffix=".jpg")
    archive = make_tar_gz_of_contents(tmp_path / "jpg", tmp_path / "cifar10-train-jpg.tar.gz")
    splits = load_dataset(f"cifar10:{archive}", cache_dir=tmp_path / "cache")
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.test is None
    assert splits.train.labels.tolist() == [label for label in range(10) for _ in range(2)]


def test_cifar10_image_folder_with_test(tmp_path):
    write_image_folder(tmp_path / "png", CIFAR10_CLASSES, per_class=1)
    write_image_folder(tmp_path / "png", CIFAR10_CLASSES, per_class=1, split="test", seed=1)
    splits = load_dataset(f"cifar10:{tmp_path / 'png'}", cache_dir=tmp_path / "cache")
    assert len(splits.train) == 10 and len(splits.test) == 10


def test_cifar10_image_size_resizes(tmp_path, cifar10_folder):
    splits = load_dataset(f"cifar10:{cifar10_folder['folder']}", image_size=16, cache_dir=tmp_path / "cache")
    assert splits.train.images.shape == (20, 3, 16, 16) and splits.test.images.shape[-1] == 16


def test_wrong_number_of_classes(tmp_path):
    write_image_folder(tmp_path / "png", ["a", "b"], per_class=1)
    with pytest.raises(FspkdError, match="10 classes"):
        load_dataset(f"cifar10:{tmp_path / 'png'}", cache_dir=tmp_path / "cache")


def test_crafted_pickle_is_refused_not_executed(tmp_path, cifar10_folder):
    marker = tmp_path / "pwned"
    batch = cifar10_folder["folder"] / "data_batch_3"
    batch.write_bytes(crafted_pickle(marker))
    with pytest.raises(FspkdError, match=r"data_batch_3.*(posix|os)\.system"):
        load_dataset(f"cifar10:{cifar10_folder['folder']}", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_crafted_pickle_in_archive_is_refused(tmp_path, cifar10_folder):
    marker = tmp_path / "pwned"
    (cifar10_folder["folder"] / "batches.meta").write_bytes(crafted_pickle(marker))
    archive = make_tar_gz(cifar10_folder["folder"], tmp_path / "evil.tar.gz")
    with pytest.raises(FspkdError, match=r"evil\.tar\.gz:cifar-10-batches-py/batches\.meta.*refused"):
        load_dataset(f"cifar10:{archive}", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_truncated_archive(tmp_path, cifar10_folder):
    archive = make_tar_gz(cifar10_folder["folder"], tmp_path / "cifar.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(FspkdError, match=r"cifar\.tar\.gz.*truncated or corrupt"):
        load_dataset(f"cifar10:{archive}", cache_dir=tmp_path / "cache")


def test_garbage_archive(tmp_path):
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"this is not gzip" * 10)
    with pytest.raises(FspkdError, match="junk.tar.gz"):
        load_dataset(f"cifar10:{archive}", cache_dir=tmp_path / "cache")


def test_corrupt_pickle(tmp_path, cifar10_folder):
    (cifar10_folder["folder"] / "test_batch").write_bytes(b"\x80\x03}q\x00(X")
    with pytest.raises(FspkdError, match="test_batch.*not a readable"):
        load_dataset(f"cifar10:{cifar10_folder['folder']}", cache_dir=tmp_path / "cache")


def test_batch_with_wrong_shape(tmp_path, cifar10_folder):
    import pickle
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (cifar10_folder["folder"] / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(FspkdError, match=r"data_batch_1.*\(N, 3072\)"):
        load_dataset(f"cifar10:{cifar10_folder['folder']}", cache_dir=tmp_path / "cache")


def test_label_out_of_range(tmp_path, cifar10_folder):
    import pickle
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    (cifar10_folder["folder"] / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(FspkdError, match=r"data_batch_2.*\[0, 9\]"):
        load_dataset(f"cifar10:{cifar10_folder['folder']}", cache_dir=tmp_path / "cache")


def test_folder_without_cifar_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(FspkdError, match="expected the official cifar10 python files"):
        load_dataset(f"cifar10:{tmp_path / 'empty'}", cache_dir=tmp_path / "cache")


# -- issue 31, point 8: labels of another type, pickles written by Python 3 ------------------------------------
def _rewrite(path, protocol: int, str_keys: bool = False, **changes) -> None:
    """Re-pickle one of the fake CIFAR files as Python 3 would write it, with ``changes`` to its entries."""
    import pickle

    from fspkd.data.safe_pickle import load_pickle

    content = {**load_pickle(path.read_bytes(), path), **{k.encode(): v for k, v in changes.items()}}
    if str_keys:
        content = {k.decode(): v for k, v in content.items()}
    path.write_bytes(pickle.dumps(content, protocol=protocol))


@pytest.mark.parametrize("labels, found", [(["3", "1", "4", "1"], r"found '3' \(str\) at position 0"),
                                           ([1, 2, 1.5, 0], r"found 1.5 \(float\) at position 2"),
                                           ([1, True, 0, 0], r"found True \(bool\) at position 1")])
def test_labels_that_are_not_integers_are_refused(tmp_path, cifar10_folder, labels, found):
    batch = cifar10_folder["folder"] / "data_batch_2"
    _rewrite(batch, 3, labels=labels)
    with pytest.raises(FspkdError, match=rf"data_batch_2: expected b'labels' as integer class indices, {found}"):
        load_dataset(f"cifar10:{cifar10_folder['folder']}", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("protocol, str_keys", [(2, False), (2, True), (5, False), (5, True), (4, True)])
def test_pickles_written_by_python_3_load_as_the_official_ones(tmp_path, cifar10_folder, protocol, str_keys):
    folder = cifar10_folder["folder"]
    for path in folder.iterdir():
        _rewrite(path, protocol, str_keys)
    if protocol == 2:
        assert b"_codecs\nencode" in (folder / "data_batch_1").read_bytes()
    if protocol == 5:
        assert b"_frombuffer" in (folder / "data_batch_1").read_bytes()
    splits = load_dataset(f"cifar10:{folder}", cache_dir=tmp_path / "cache")
    _assert_matches(splits.train, *cifar10_folder["train"])
    _assert_matches(splits.test, *cifar10_folder["test"])
    assert splits.classes == CIFAR10_CLASSES


def test_only_the_globals_of_numpy_arrays_are_allowed(tmp_path):
    import os
    import pickle

    from fspkd.data.safe_pickle import load_pickle

    marker = tmp_path / "pwned"
    with pytest.raises(FspkdError, match=r"refused to unpickle global posix.system|refused to unpickle global os"):
        load_pickle(crafted_pickle(marker), "evil")
    for protocol in (2, 5):
        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        with pytest.raises(FspkdError, match="refused to unpickle global"):
            load_pickle(pickle.dumps({"data": Exploit()}, protocol=protocol), "evil")
    # _codecs.encode is allowed for protocol 2's latin-1 bytes only: another codec is not even looked up
    other_codec = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xq\x01X\x05\x00\x00\x00rot13q\x02\x86q\x03Rq\x04."
    with pytest.raises(FspkdError, match=r"refused to unpickle global _codecs.encode with codec 'rot13'"):
        load_pickle(other_codec, "evil")
    for module, name in (("builtins", "eval"), ("numpy", "load"), ("numpy.core.numeric", "frombuffer"),
                         ("numpy.lib.npyio", "load"), ("codecs", "encode")):
        with pytest.raises(FspkdError, match=rf"refused to unpickle global {module}.{name}"):
            load_pickle(f"c{module}\n{name}\n.".encode(), "evil")
    assert not marker.exists()
