"""Image folders as users have them: photos of varied sizes with EXIF orientation, greyscale, 16-bit, CMYK and
palette images, empty or corrupt files named by path, symlinked folders, and one decoding per image size."""

import os

import numpy as np
import pytest
from datafakes import write_image_folder
from PIL import Image

import fspkd.data.imagefolder as imagefolder_module
from fspkd.core.errors import FspkdError
from fspkd.data import load_dataset

ORIENTATION = 0x0112  # the EXIF tag viewers turn photos by


def load(root, size=16, **kwargs):
    return load_dataset(f"imagefolder:{root}", image_size=size, cache_dir=root.parent / "cache", **kwargs)


def one_image_set(tmp_path, image: Image.Image, name: str, **save_options):
    """tmp_path/set/train/only/<name> holding ``image``; returns the set's root."""
    path = tmp_path / "set" / "train" / "only" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_options)
    return tmp_path / "set"


def test_exif_orientation_is_applied(tmp_path):
    # stored sideways (landscape, red on the left) with "rotate 90 degrees clockwise": shown as a portrait, red on top
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40, 0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = 6
    loaded = load(one_image_set(tmp_path, image, "phone.jpg", exif=exif, quality=95)).train.images[0]
    top, bottom = loaded[:, :4].float().mean((1, 2)), loaded[:, -4:].float().mean((1, 2))
    assert top[0] > 200 and bottom[0] < 50  # red on top, not on the left


@pytest.mark.parametrize("mode, value, suffix, expected", [
    ("L", 100, ".png", (100, 100, 100)),  # greyscale
    ("LA", (100, 255), ".png", (100, 100, 100)),  # greyscale with alpha
    ("I;16", 51400, ".png", (200, 200, 200)),  # 16-bit greyscale, scaled to 8 bits rather than clipped to white
    ("CMYK", (0, 255, 255, 0), ".jpg", (255, 0, 0)),  # print-ready JPEG: cyan 0, magenta and yellow full = red
    ("RGBA", (10, 20, 30, 128), ".png", (10, 20, 30)),
])
def test_other_colour_modes_become_rgb(tmp_path, mode, value, suffix, expected):
    root = one_image_set(tmp_path, Image.new(mode, (30, 20), value), f"image{suffix}")
    pixel = load(root).train.images[0, :, 8, 8].tolist()
    assert all(abs(got - want) <= 3 for got, want in zip(pixel, expected)), pixel


def test_palette_image_becomes_rgb(tmp_path):
    image = Image.new("P", (24, 24))
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.paste(1, (0, 0, 24, 24))  # every pixel palette entry 1: green
    pixel = load(one_image_set(tmp_path, image, "palette.gif")).train.images[0, :, 5, 5].tolist()
    assert pixel == [0, 200, 0]


def test_varied_sizes_come_out_at_the_chosen_size(tmp_path):
    for index, size in enumerate([(13, 200), (640, 480), (16, 16), (301, 97)]):
        one_image_set(tmp_path, Image.new("RGB", size, (index * 50, 0, 0)), f"{index}.png")
    images = load(tmp_path / "set", size=24).train.images
    assert images.shape == (4, 3, 24, 24)
    assert images[:, 0, 12, 12].tolist() == [0, 50, 100, 150]


def test_empty_file_is_named_in_one_line(tmp_path):
    write_image_folder(tmp_path / "set", ["a", "b"], per_class=1)
    (tmp_path / "set" / "train" / "b" / "empty.jpg").write_bytes(b"")
    with pytest.raises(FspkdError) as error:
        load(tmp_path / "set")
    assert str(error.value) == f"{tmp_path / 'set' / 'train' / 'b' / 'empty.jpg'}: empty file (0 bytes), not an image"


def test_corrupt_file_is_named_in_one_line(tmp_path):
    write_image_folder(tmp_path / "set", ["a"], per_class=1)
    (tmp_path / "set" / "train" / "a" / "notes.png").write_bytes(b"these are my notes, not a picture\n" * 3)
    with pytest.raises(FspkdError) as error:
        load(tmp_path / "set")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'set' / 'train' / 'a' / 'notes.png'}: unreadable image")
    assert "\n" not in message and "BytesIO" not in message  # Pillow's own text names a buffer, not the file


def test_symlinked_folders_and_files_are_followed(tmp_path):
    write_image_folder(tmp_path / "storage", ["cats"], per_class=2)
    write_image_folder(tmp_path / "elsewhere", ["dogs"], per_class=3)
    write_image_folder(tmp_path / "set", ["birds"], per_class=1, split="val")
    (tmp_path / "set" / "train").symlink_to(tmp_path / "storage" / "train", target_is_directory=True)
    (tmp_path / "storage" / "train" / "dogs").symlink_to(tmp_path / "elsewhere" / "train" / "dogs")
    (tmp_path / "storage" / "train" / "cats" / "loop").symlink_to(tmp_path / "storage")  # must not loop forever
    write_image_folder(tmp_path / "storage", ["birds"], per_class=1)
    (tmp_path / "storage" / "train" / "birds" / "linked.png").symlink_to(tmp_path / "elsewhere" / "train" / "dogs"
                                                                          / "0000.png")  # a linked file
    splits = load(tmp_path / "set")
    assert splits.classes == ["birds", "cats", "dogs"] and splits.train.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert splits.test.labels.tolist() == [0]


def test_decoded_once_per_size_and_redecoded_when_a_linked_image_changes(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "elsewhere", ["dogs"], per_class=2)
    (tmp_path / "set" / "train").mkdir(parents=True)
    (tmp_path / "set" / "train" / "dogs").symlink_to(tmp_path / "elsewhere" / "train" / "dogs")
    decoded = []
    real_decode = imagefolder_module.decode_image
    monkeypatch.setattr(imagefolder_module, "decode_image",
                        lambda data, size, source: decoded.append(size) or real_decode(data, size, source))
    load(tmp_path / "set", size=16)
    load(tmp_path / "set", size=16)
    assert decoded == [16, 16]  # two images, decoded once
    load(tmp_path / "set", size=32)
    assert decoded == [16, 16, 32, 32]
    image = tmp_path / "elsewhere" / "train" / "dogs" / "0000.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert load(tmp_path / "set", size=16).train.images[0, :, 0, 0].tolist() == [1, 2, 3]
    assert decoded[4:] == [16, 16]
