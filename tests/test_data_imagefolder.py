"""Image-folder and CUB-200 readers: layouts, resizing and cropping, unreadable files, the real ants/bees set."""

import tarfile

import numpy as np
import pytest
import torch
from datafakes import make_tar_gz, save_image, shared_data_dir, write_image_folder

from fspkd.core.errors import FspkdError
from fspkd.data import load_dataset


def test_train_and_val_folders(tmp_path):
    write_image_folder(tmp_path / "set", ["cats", "dogs"], per_class=3, size=(50, 40))
    write_image_folder(tmp_path / "set", ["cats", "dogs"], per_class=2, split="val", size=(40, 60),
                       suffix=".jpg")
    splits = load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")
    assert splits.classes == ["cats", "dogs"] and splits.num_classes == 2
    assert splits.train.images.shape == (6, 3, 64, 64) and splits.test.images.shape == (4, 3, 64, 64)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and splits.name == "set"
    assert splits.default_augment


def test_test_folder_and_image_size(tmp_path):
    write_image_folder(tmp_path / "set", ["a", "b"], per_class=1)
    write_image_folder(tmp_path / "set", ["b"], per_class=1, split="test")
    splits = load_dataset(f"imagefolder:{tmp_path / 'set'}", image_size=24, cache_dir=tmp_path / "cache")
    assert splits.test.images.shape == (1, 3, 24, 24) and splits.test.labels.tolist() == [1]


def test_shorter_side_resize_then_centre_crop(tmp_path):
    # 120x60 image: left third red, middle third green, right third blue; resized to 64x32 then the
    # central 32x32 keeps the green band in the middle and shows red / blue only at the edges.
    pixels = np.zeros((60, 120, 3), np.uint8)
    pixels[:, :40, 0], pixels[:, 40:80, 1], pixels[:, 80:, 2] = 255, 255, 255
    save_image(tmp_path / "set" / "train" / "only" / "wide.png", pixels)
    image = load_dataset(f"imagefolder:{tmp_path / 'set'}", image_size=32,
                         cache_dir=tmp_path / "cache").train.images[0]
    assert image.shape == (3, 32, 32)
    assert image[1, :, 12:20].min() == 255 and image[0, :, 12:20].max() == 0
    assert image[0, :, 0].float().mean() > 200 and image[2, :, -1].float().mean() > 200


def test_archive_with_wrapping_folder(tmp_path):
    write_image_folder(tmp_path / "animals", ["x", "y", "z"], per_class=2, suffix=".jpg")
    archive = make_tar_gz(tmp_path / "animals", tmp_path / "animals.tar.gz")
    splits = load_dataset(f"imagefolder:{archive}", image_size=32, cache_dir=tmp_path / "cache")
    assert len(splits.train) == 6 and splits.test is None and splits.name == "animals"


def test_unreadable_image_is_named(tmp_path):
    write_image_folder(tmp_path / "set", ["a", "b"], per_class=2)
    (tmp_path / "set" / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(FspkdError, match=r"train/b/broken\.jpg: unreadable image"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")


def test_truncated_jpeg_in_archive_is_named(tmp_path):
    write_image_folder(tmp_path / "set", ["a"], per_class=1, size=(64, 64), suffix=".jpg")
    path = tmp_path / "set" / "train" / "a" / "0000.jpg"
    path.write_bytes(path.read_bytes()[:200])
    archive = make_tar_gz(tmp_path / "set", tmp_path / "set.tar.gz")
    with pytest.raises(FspkdError, match=r"set\.tar\.gz:set/train/a/0000\.jpg: unreadable"):
        load_dataset(f"imagefolder:{archive}", cache_dir=tmp_path / "cache")


def test_no_class_folders(tmp_path):
    save_image(tmp_path / "set" / "train" / "loose.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FspkdError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")


def test_no_train_folder(tmp_path):
    save_image(tmp_path / "set" / "a" / "x.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FspkdError, match="no 'train/'"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")


def test_test_class_missing_from_train(tmp_path):
    write_image_folder(tmp_path / "set", ["a"], per_class=1)
    write_image_folder(tmp_path / "set", ["zebra"], per_class=1, split="val")
    with pytest.raises(FspkdError, match="zebra"):
        load_dataset(f"imagefolder:{tmp_path / 'set'}", cache_dir=tmp_path / "cache")


def _write_cub(root, sizes=((70, 50), (50, 70), (64, 64), (90, 45))):
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    for index, size in enumerate(sizes, start=1):
        label = 1 + index % 2
        relative = f"{classes[label - 1]}/bird_{index}.jpg"
        save_image(root / "images" / relative, np.full((size[1], size[0], 3), 40 * index, np.uint8))
        lines["images.txt"].append(f"{index} {relative}")
        lines["image_class_labels.txt"].append(f"{index} {label}")
        lines["train_test_split.txt"].append(f"{index} {int(index <= 3)}")
    lines["classes.txt"] = [f"{i} {name}" for i, name in enumerate(classes, start=1)]
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return classes


def test_cub200_layout(tmp_path):
    classes = _write_cub(tmp_path / "CUB_200_2011")
    splits = load_dataset(f"cub200:{tmp_path / 'CUB_200_2011'}", image_size=32, cache_dir=tmp_path / "cache")
    assert splits.classes == classes and splits.name == "cub200"
    assert splits.train.images.shape == (3, 3, 32, 32) and splits.train.labels.tolist() == [1, 0, 1]
    assert splits.test.labels.tolist() == [0]
    # image 4 is a flat grey 160: the cropped pixels keep that value (JPEG of a flat image is exact-ish)
    assert abs(splits.test.images.float().mean().item() - 160) < 3


def test_cub200_archive_default_size(tmp_path):
    _write_cub(tmp_path / "CUB_200_2011")
    archive = make_tar_gz(tmp_path / "CUB_200_2011", tmp_path / "CUB_200_2011.tgz")
    splits = load_dataset(f"cub200:{archive}", cache_dir=tmp_path / "cache")
    assert splits.train.images.shape[-2:] == (64, 64)


def test_cub200_bad_label(tmp_path):
    _write_cub(tmp_path / "cub")
    (tmp_path / "cub" / "image_class_labels.txt").write_text("1 1\n2 7\n3 1\n4 2\n")
    with pytest.raises(FspkdError, match=r"image_class_labels\.txt.*'7'"):
        load_dataset(f"cub200:{tmp_path / 'cub'}", cache_dir=tmp_path / "cache")


def test_cub200_missing_image(tmp_path):
    _write_cub(tmp_path / "cub")
    next((tmp_path / "cub" / "images").rglob("bird_2.jpg")).unlink()
    with pytest.raises(FspkdError, match=r"bird_2\.jpg: missing"):
        load_dataset(f"cub200:{tmp_path / 'cub'}", cache_dir=tmp_path / "cache")


def test_real_hymenoptera(tmp_path):
    shared = shared_data_dir()
    if shared is None or not (shared / "hymenoptera.tar.gz").is_file():
        pytest.skip("shared hymenoptera.tar.gz not available")
    with tarfile.open(shared / "hymenoptera.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    splits = load_dataset(f"imagefolder:{tmp_path / 'extracted' / 'hymenoptera_data'}", image_size=32,
                          cache_dir=tmp_path / "cache")
    assert splits.classes == ["ants", "bees"]
    assert len(splits.train) == 245 and len(splits.test) == 153
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(splits.train.labels).tolist()[0] > 100
