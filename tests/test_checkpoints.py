import io
import os
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fspkd.core.checkpoint import (
    load_checkpoint,
    load_state_dict_file,
    load_weights,
    save_checkpoint,
    save_weights_safetensors,
)
from fspkd.core.errors import FspkdError
from fspkd.models import create
from fspkd.training.inference import model_from_checkpoint


def shared_dir() -> Path:
    return Path(os.environ.get("FSPKD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


RESNET20_CIFAR10 = shared_dir() / "weights" / "resnet20-12fca82f.th"
CIFAR10_JPEGS = shared_dir() / "data" / "cifar10-train-jpg.tar.gz"
CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
needs_resnet20 = pytest.mark.skipif(not RESNET20_CIFAR10.is_file(), reason=f"{RESNET20_CIFAR10} absent")


def cifar10_jpegs(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` training JPEGs of each class, normalised as pytorch_resnet_cifar10 expects."""
    images, labels = [], []
    with tarfile.open(CIFAR10_JPEGS) as archive:
        for member in archive:
            parts = member.name.split("/")  # train/<class>/NNNN.jpg
            if member.isfile() and len(parts) == 3 and int(parts[2].split(".")[0]) < per_class:
                image = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")
                images.append(np.asarray(image))
                labels.append(CLASSES.index(parts[1]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None], torch.tensor(labels)


@needs_resnet20
@pytest.mark.skipif(not CIFAR10_JPEGS.is_file(), reason=f"{CIFAR10_JPEGS} absent")
def test_pytorch_resnet_cifar10_checkpoint_classifies_real_images():
    model = create("resnet20")
    load_weights(model, RESNET20_CIFAR10)
    x, y = cifar10_jpegs(per_class=50)
    assert len(y) == 500 and y.bincount().tolist() == [50] * 10
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.75  # far above the 10% of an untrained net (see ../shared/weights/README.md)


@needs_resnet20
def test_pytorch_resnet_cifar10_format_is_unwrapped():
    state = load_state_dict_file(RESNET20_CIFAR10)
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    assert not any(k.endswith("num_batches_tracked") for k in state)


@needs_resnet20
def test_wrong_architecture_lists_the_differences():
    with pytest.raises(FspkdError) as error:
        load_weights(create("resnet32"), RESNET20_CIFAR10)
    message = str(error.value)
    assert "resnet20-12fca82f.th" in message and "resnet32" in message
    assert "60 missing keys (layer1.3.conv1.weight" in message  # 2 blocks x 3 sections x 10 (conv, 4 BN, conv, 4 BN)
    with pytest.raises(FspkdError, match=r"2 differing shapes \(linear.weight: file \(10, 64\) vs model \(100, 64\), linear.bias"):
        load_weights(create("resnet20", num_classes=100), RESNET20_CIFAR10)
    with pytest.raises(FspkdError, match=r"10 missing keys \(layer2.0.shortcut.0.weight"):
        load_weights(create("resnet20", shortcut="B"), RESNET20_CIFAR10)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    (tmp_path / "broken.safetensors").write_text("{}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name in ("random.pt", "notes.pt", "broken.safetensors", "list.pt", "missing.pt"):
        with pytest.raises(FspkdError, match=name):
            load_state_dict_file(tmp_path / name)
    with pytest.raises(FspkdError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class WritesMarker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": WritesMarker(tmp_path / "marker")}, tmp_path / "evil.pt")
    for load in (load_state_dict_file, load_checkpoint):
        with pytest.raises(FspkdError, match="evil.pt.*weights_only"):
            load(tmp_path / "evil.pt")
    assert not (tmp_path / "marker").exists()
    # the file really is armed: an unrestricted load runs its code
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "marker").read_text() == "code ran"


def test_torchvision_resnet34_state_dict_round_trips(tmp_path):
    source = create("resnet34", num_classes=1000)
    state = OrderedDict(source.state_dict())
    # spot checks of torchvision's resnet34 key names and count (218 entries)
    assert len(state) == 218
    for key in ("bn1.num_batches_tracked", "layer2.0.downsample.0.weight", "layer4.2.bn2.running_var"):
        assert key in state
    assert state["fc.weight"].shape == (1000, 512)
    torch.save(state, tmp_path / "resnet34.pth")
    target = create("resnet34", num_classes=1000)
    load_weights(target, tmp_path / "resnet34.pth")
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_ddp_prefix_and_our_checkpoint_format(tmp_path):
    model = create("resnet8", num_classes=5, width=2)
    ddp_state = {f"module.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(
        tmp_path / "ours.pt",
        {"model": ddp_state, "model_name": "resnet8", "model_options": {"width": 2}, "num_classes": 5, "step": 3},
    )
    assert load_checkpoint(tmp_path / "ours.pt")["step"] == 3
    rebuilt = model_from_checkpoint(tmp_path / "ours.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
    save_checkpoint(tmp_path / "bare.pt", {"model": ddp_state})
    with pytest.raises(FspkdError, match="no 'model_name' entry"):
        model_from_checkpoint(tmp_path / "bare.pt")


def test_safetensors_round_trip(tmp_path):
    model = create("resnet14")
    save_weights_safetensors(model, tmp_path / "w.safetensors", {"model_name": "resnet14"})
    target = create("resnet14")
    load_weights(target, tmp_path / "w.safetensors")
    for key, value in target.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    with pytest.raises(FspkdError, match="str to str"):
        save_weights_safetensors(model, tmp_path / "x.safetensors", {"step": 3})


def test_non_strict_load_reports_what_it_left_out(tmp_path):
    torch.save({"linear.weight": torch.zeros(10, 64), "extra": torch.zeros(1)}, tmp_path / "part.pt")
    result = load_weights(create("resnet20"), tmp_path / "part.pt", strict=False)
    assert result.unexpected_keys == ["extra"] and "conv1.weight" in result.missing_keys


def test_save_refuses_what_weights_only_cannot_read_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(FspkdError, match=r"payload\['metrics'\]\['acc'\] is a numpy.float64"):
        save_checkpoint(path, {"step": 2, "metrics": {"acc": np.float64(0.5)}})
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})

    def torch_save_that_dies(obj, file):
        file.write(b"half a checkpoint")
        raise pickle.PicklingError("disk full, say")

    monkeypatch.setattr(torch, "save", torch_save_that_dies)
    with pytest.raises(pickle.PicklingError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_eval_of_a_foreign_state_dict_defaults_to_dataset_statistics_and_refuses_other_class_counts(tmp_path):
    from fspkd.training.inference import evaluate_checkpoints

    torch.save(create("resnet8", num_classes=10).state_dict(), tmp_path / "ten.pt")
    result = evaluate_checkpoints([tmp_path / "ten.pt"], data="synthetic:200,100", model="resnet8")
    assert result["images"] == 100 and 0 <= result["networks"][0]["accuracy"] <= 100
    torch.save(create("resnet8", num_classes=3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(FspkdError, match=r"three\.pt: the network has 3 classes but synthetic:200,100 has 10"):
        evaluate_checkpoints([tmp_path / "three.pt"], data="synthetic:200,100", model="resnet8")
