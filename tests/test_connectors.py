"""FSP between networks of different widths through learned connectors (fspkd.core.connectors): built only where
a tap's width differs, trained in stage 1 as extra modules (checkpointed, resumed exactly, averaged over DDP
ranks), never part of the student's weights; and the errors of pairs that still cannot work."""

import csv
import dataclasses
import subprocess

import pytest
import torch
from interrupts import train_until_interrupted

from fspkd.cli import main
from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import FSP_CONNECTORS, RunConfig, Schedule
from fspkd.core.connectors import DEFAULT_DESIGN, DESIGNS, Connectors, Linear
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import fsp_matrix
from fspkd.core.settings import resolve_config
from fspkd.methods.fsp import FSP
from fspkd.models import create
from fspkd.training.run import train

TINY = ["--data", "synthetic:320,100", "--batch-size", "32", "--eval-every", "4", "--val-split", "0.1"]


def tiny(**overrides) -> RunConfig:
    config = RunConfig(data="synthetic:320,100", model="resnet8", batch_size=32, eval_every=4, val_split=0.1,
                       task=Schedule(iterations=4, lr=0.05, milestones=[2]))
    return dataclasses.replace(config, **overrides)


def distill(teacher, **overrides) -> RunConfig:
    """A two-stage FSP run of a resnet8 student from ``teacher`` (Adam on unit-norm matrices, as the fast recipe)."""
    settings = dict(method="fsp", teacher=str(teacher), stage1=Schedule(iterations=8, lr=1e-3, optimizer="adam"),
                    fsp_normalize="frobenius")
    return tiny(**{**settings, **overrides})


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory):
    """A resnet8 twice as wide as the student at every tap."""
    out = tmp_path_factory.mktemp("runs") / "wide"
    train(tiny(model_options={"width": 2}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def same_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "same"
    train(tiny(), out, progress=False)
    return out


def fsp_losses(out) -> list[float]:
    with open(out / "metrics.csv", newline="") as f:
        return [float(row["fsp_loss"]) for row in csv.DictReader(f) if row["fsp_loss"]]


def checked_method(teacher_width: int, **settings) -> FSP:
    torch.manual_seed(0)
    config = resolve_config(method="fsp", model="resnet8", teacher="unused", **settings)
    method = FSP(create("resnet8", num_classes=10), create("resnet8", num_classes=10, width=teacher_width), config)
    method.check(torch.randn(2, 3, 32, 32))
    return method


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# -- the modules ---------------------------------------------------------------------------------------------------


def test_the_settings_name_every_design():
    assert set(DESIGNS) | {"none", "auto"} == set(FSP_CONNECTORS) and DEFAULT_DESIGN in DESIGNS
    with pytest.raises(FspkdError, match="fsp_connector must be one of"):
        RunConfig(fsp_connector="conv3x3").validate()


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_connectors_are_built_only_for_taps_whose_widths_differ(design):
    widths = {("a", "a"): (16, 32), ("b", "b"): (16, 16), ("c", "x"): (8, 24)}
    connectors = Connectors(design, widths)
    assert connectors.links == [("a", "a"), ("c", "x")] and len(connectors.adapters) == 2


def test_equal_widths_build_no_connector_and_wider_teachers_one_per_tap():
    same = checked_method(1)
    assert same.connectors is None and same.extra_modules("stage1") == {}
    same.close()
    wide = checked_method(2)  # resnet8's "before" pairs: layer1:input > layer1 > layer2 > layer3, all twice as wide
    assert wide.connectors.links == [(t, t) for t in ("layer1", "layer1:input", "layer2", "layer3")]
    assert list(wide.extra_modules("stage1")) == ["connectors"] and wide.extra_modules("task") == {}
    wide.close()


def test_the_linear_design_is_a_1x1_convolution_of_the_maps_moved_onto_the_matrix():
    a, b = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 8, 8)
    first, second = Linear(4, 6), Linear(5, 7)
    mapped = fsp_matrix(torch.einsum("ts,bshw->bthw", first.weight, a), torch.einsum("ts,bshw->bthw", second.weight, b))
    torch.testing.assert_close(second(first(fsp_matrix(a, b)), side="columns"), mapped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_connected_matrices_take_the_teacher_s_shapes_and_stay_float32_under_bf16(design):
    method = checked_method(2, fsp_connector=design)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student_g = method.student_matrices(torch.randn(2, 3, 32, 32))
    teacher_g = method.live_teacher_matrices(torch.randn(2, 3, 32, 32))
    assert [g.shape for g in student_g] == [g.shape for g in teacher_g]
    assert all(g.dtype == torch.float32 for g in student_g)
    method.close()


# -- errors --------------------------------------------------------------------------------------------------------


def test_fsp_connector_none_keeps_the_equal_width_error(wide_teacher, tmp_path, capsys):
    args = ["distill", "--quiet", "--out", str(tmp_path / "none"), "--teacher", str(wide_teacher), "--model",
            "resnet8", "--fsp-connector", "none", "--stage1-iterations", "2", "--iterations", "2", *TINY]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "FSP needs equal channel widths" in error
    assert "pair 1 (layer1:input -> layer1): student (16, 16), teacher (32, 32)" in error
    assert "--model-option width=2" in error and "--fsp-connector auto" in error
    assert not (tmp_path / "none").exists()


def test_spatial_sizes_no_max_pooling_matches_are_named_in_one_line():
    config = resolve_config(method="fsp", model="resnet8", teacher="unused", fsp_pairs=[["layer2", "layer3"]])
    method = FSP(create("resnet8", num_classes=10), create("resnet8", num_classes=10), config)
    with pytest.raises(FspkdError) as caught:
        method.check(torch.randn(2, 3, 30, 30))  # layer2 is 15 x 15, layer3 8 x 8
    message = str(caught.value)
    assert "\n" not in message and "student's FSP pair layer2 -> layer3" in message
    assert "(32, 15, 15) and (64, 8, 8)" in message and "not an integer multiple" in message
    method.close()


# -- runs ----------------------------------------------------------------------------------------------------------


def test_equal_widths_run_exactly_as_without_connectors(same_teacher, tmp_path):
    """"auto" at equal widths is today's run: no module is built, no random number drawn."""
    train(distill(same_teacher, stage1=Schedule(iterations=4, lr=1e-3, optimizer="adam")), tmp_path / "auto",
          progress=False)
    train(distill(same_teacher, stage1=Schedule(iterations=4, lr=1e-3, optimizer="adam"), fsp_connector="none"),
          tmp_path / "none", progress=False)
    assert fsp_losses(tmp_path / "auto") == fsp_losses(tmp_path / "none")
    assert_same_weights(load_checkpoint(tmp_path / "auto" / "final.pt")["model"],
                        load_checkpoint(tmp_path / "none" / "final.pt")["model"])


@pytest.mark.parametrize("design", sorted(DESIGNS))
def test_a_narrower_student_learns_the_teacher_s_flow_through_connectors(design, wide_teacher, tmp_path):
    train(distill(wide_teacher, fsp_connector=design), tmp_path / design, progress=False)
    losses = fsp_losses(tmp_path / design)
    assert len(losses) == 2 and losses[-1] < losses[0]
    student_keys = set(create("resnet8", num_classes=10).state_dict())
    for name in ("final.pt", "checkpoints/stage1.pt"):  # the student alone
        assert set(load_checkpoint(tmp_path / design / name)["model"]) == student_keys


def test_connectors_are_checkpointed_and_resume_exactly(wide_teacher, tmp_path, monkeypatch):
    config = distill(wide_teacher)
    train(config, tmp_path / "straight", progress=False)
    # interrupted in stage 1, after its checkpoint at 4
    train_until_interrupted(config, tmp_path / "resumed", monkeypatch, at_call=7)
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert saved["position"] == [0, 0, 4] and saved["extra"]["connectors"]
    train(config, tmp_path / "resumed", resume=True, progress=False)
    assert fsp_losses(tmp_path / "resumed") == fsp_losses(tmp_path / "straight")
    for name in ("checkpoints/stage1.pt", "final.pt"):
        assert_same_weights(load_checkpoint(tmp_path / "straight" / name)["model"],
                            load_checkpoint(tmp_path / "resumed" / name)["model"])


def test_connectors_work_with_stored_teacher_fsp_and_bf16(wide_teacher, tmp_path):
    """Stored targets are the teacher's own matrices: without augmentation (one view, float32 storage) stage 1
    sees what the live teacher gives."""
    common = dict(augment=False, stored_fsp_dtype="float32", stage1=Schedule(iterations=4, lr=1e-3, optimizer="adam"))
    train(distill(wide_teacher, **common), tmp_path / "live", progress=False)
    train(distill(wide_teacher, stored_fsp=True, **common), tmp_path / "stored", progress=False)
    torch.testing.assert_close(fsp_losses(tmp_path / "stored"), fsp_losses(tmp_path / "live"), rtol=1e-3, atol=0)
    train(distill(wide_teacher, precision="bf16", **common), tmp_path / "bf16", progress=False)
    assert all(loss == loss and loss > 0 for loss in fsp_losses(tmp_path / "bf16"))


@pytest.mark.slow
def test_two_processes_average_the_connectors_gradients(wide_teacher, tmp_path):
    """Two torchrun processes equal one process taking the batch in two pieces (tests/test_distributed.py): the
    stage-1 loss curve and the stage-1 weights agree only if the connectors' gradients are averaged too."""
    from test_distributed import assert_same_run, subprocess_env, torchrun

    args = ["--method", "fsp", "--teacher", str(wide_teacher), "--model", "resnet8", "--fsp-connector",
            DEFAULT_DESIGN, "--stage1-iterations", "8", "--stage1-optimizer", "adam", "--fsp-normalize", "frobenius",
            "--iterations", "2", "--seed", "3", *TINY]
    done = subprocess.run(torchrun("distill", "--quiet", "--out", str(tmp_path / "ddp"), *args), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["distill", "--quiet", "--micro-batches", "2", "--out", str(tmp_path / "one"), *args]) == 0
    assert_same_run(tmp_path / "ddp", tmp_path / "one", ["checkpoints/stage1.pt", "final.pt"])
