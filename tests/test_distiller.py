"""fspkd.Distiller: the losses of a method for a user's own loop, the same object the engine uses."""

import dataclasses

import pytest
import torch
import torch.distributed as dist
from lookalikes import TimmLikeNet, TorchvisionLikeResNet
from torch import nn

import fspkd
from fspkd import Distiller, FspkdError
from fspkd.models import create

IMAGES = torch.randn(4, 3, 32, 32)
LABELS = torch.tensor([0, 1, 2, 1])


def models(student="resnet8", teacher="resnet14", classes=3):
    torch.manual_seed(0)
    return create(student, num_classes=classes), create(teacher, num_classes=classes)


def test_stage1_is_the_fsp_loss_only_and_the_task_stage_cross_entropy():
    student, teacher = models()
    distiller = Distiller(student, teacher, "fsp")
    assert distiller.stage == "stage1" and distiller.stages == ("stage1", "task")
    logits, losses = distiller(IMAGES, LABELS)
    assert logits is None and set(losses) == {"fsp_loss", "loss"} and losses["loss"] > 0
    losses["loss"].backward()
    assert student.conv1.weight.grad is not None and student.get_submodule(student.head).weight.grad is None
    assert all(p.grad is None for p in teacher.parameters())
    logits, losses = distiller.set_stage("task")(IMAGES, LABELS)
    assert logits.shape == (4, 3) and set(losses) == {"task_loss", "loss"}
    assert torch.equal(losses["loss"], nn.functional.cross_entropy(logits, LABELS))


def test_kd_adds_its_soft_term_to_the_task_loss():
    student, teacher = models()
    distiller = Distiller(student, teacher, "kd", kd_alpha=0.5)
    logits, losses = distiller(IMAGES, LABELS)
    assert set(losses) == {"task_loss", "kd_loss", "loss"}
    assert torch.allclose(losses["loss"], 0.5 * losses["task_loss"] + 0.5 * losses["kd_loss"])
    with pytest.raises(FspkdError, match="method 'kd' has stages task, not 'stage1'"):
        distiller.stage = "stage1"


def test_the_teacher_is_frozen_hidden_and_stays_in_eval_mode():
    student, teacher = models()
    distiller = Distiller(student, teacher, "fsp").train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    ids = {id(p) for p in distiller.parameters()}
    assert ids == {id(p) for p in student.parameters()}
    assert all(key.startswith("student.") for key in distiller.state_dict())
    distiller.check(IMAGES).to(torch.float64)  # after check: the method's BatchNorm-folded teacher moves too
    assert teacher.conv1.weight.dtype == torch.float64 and student.conv1.weight.dtype == torch.float64
    runner = distiller.method.teacher_taps.model
    assert runner is not teacher and all(p.dtype == torch.float64 for p in runner.parameters())
    assert distiller(IMAGES.double(), LABELS)[1]["loss"] > 0  # FSP matrices are float32 whatever the input


@pytest.mark.parametrize("student_layout", ["nchw", "channels_last"])
def test_the_teacher_takes_the_students_layout_and_leaves_a_users_nchw_alone(student_layout):
    student, teacher = models()
    if student_layout == "channels_last":  # as the engine prepares its student by default
        student = student.to(memory_format=torch.channels_last)
    Distiller(student, teacher, "kd").check(IMAGES)
    assert teacher.conv1.weight.is_contiguous() == (student_layout == "nchw")


def test_settings_resolve_as_the_cli_resolves_them():
    student, teacher = models()
    cli = fspkd.resolve_config({"method": "fsp"})
    assert Distiller(student, teacher, "fsp").config == dataclasses.replace(cli, model="resnet8")
    config = Distiller(student, teacher, "fsp", fsp_normalize="none", stage1={"iterations": 7}).config
    assert config.fsp_normalize == "none" and config.stage1.iterations == 7 and config.fsp_first == "after"
    with pytest.raises(FspkdError, match="unknown key 'fsp_normalise'.*did you mean 'fsp_normalize'"):
        Distiller(student, teacher, "fsp", fsp_normalise="none")
    with pytest.raises(FspkdError, match="method 'fsp' needs a teacher"):
        Distiller(student, None, "fsp")


def test_fitnet_regressors_are_learnable_parameters_after_check():
    student, teacher = models("resnet8", "resnet8x4")
    distiller = Distiller(student, teacher, "fitnet").check(IMAGES)
    regressor = distiller.extras["regressors"][0]
    assert isinstance(regressor, nn.Conv2d) and {id(p) for p in regressor.parameters()} <= {
        id(p) for p in distiller.parameters()}
    assert distiller.check(IMAGES).extras["regressors"][0] is regressor  # set up once: an optimiser keeps it
    _, losses = distiller(IMAGES, LABELS)
    assert set(losses) == {"hint_loss", "loss"}
    assert isinstance(distiller.make_optimizer(), torch.optim.SGD) and distiller.schedule.lr == 1e-4


def test_check_gives_the_clis_one_line_errors():
    student, teacher = models("resnet8", "resnet8x4")
    with pytest.raises(FspkdError, match="FSP needs equal channel widths at both ends of every pair") as err:
        Distiller(student, teacher, "fsp", fsp_connector="none").check(IMAGES)
    assert "\n" not in str(err.value) and not student.layer1._forward_hooks  # no hooks left on a refused set-up
    with pytest.raises(FspkdError, match="no module 'layer9' in CifarResNet"):
        Distiller(*models(), "fsp", pairs=[("layer1", "layer9")]).check(IMAGES)
    with pytest.raises(FspkdError, match="the student has 3 classes but the teacher 5"):
        Distiller(create("resnet8", num_classes=3), create("resnet8", num_classes=5), "kd").check(IMAGES)
    with pytest.raises(FspkdError, match=r"labels run from 0 to 7 but the student has 3 classes \(labels 0 to 2\)"):
        Distiller(*models(), "kd").check(IMAGES, torch.tensor([0, 7]))


def test_explicit_pairs_win_over_declared_sections():
    student, teacher = models("resnet8", "resnet8")
    distiller = Distiller(student, teacher, "fsp", pairs=[("conv1", "layer1")]).check(IMAGES)
    assert distiller.method.student_pairs == [("conv1", "layer1")] == distiller.method.teacher_pairs


@pytest.mark.parametrize("net, size", [(TorchvisionLikeResNet, 64), (TimmLikeNet, 32)])
def test_models_without_declared_sections_are_distilled_on_found_sections(net, size):
    torch.manual_seed(0)
    images = torch.randn(4, 3, size, size)
    student, teacher = net(), net()
    distiller = Distiller(student, teacher, "fsp", example=images)
    _, losses = distiller(images, LABELS)
    assert losses["fsp_loss"] > 0 and len(distiller.method.student_pairs) >= 3
    hints = Distiller(net(), teacher, "fitnet", example=images)
    assert hints(images, LABELS)[1]["hint_loss"] > 0


def fsp_loss_through(wrapper):
    student, teacher = models()
    plain = Distiller(student, teacher, "fsp")(IMAGES, LABELS)[1]["fsp_loss"]
    wrapped = Distiller(wrapper(student), teacher, "fsp", pairs=[("module.layer1.0:input", "layer1")],
                        teacher_pairs=[("layer1.0:input", "layer1")])
    again = Distiller(student, teacher, "fsp", pairs=[("layer1.0:input", "layer1")])(IMAGES, LABELS)[1]["fsp_loss"]
    return plain, Distiller(wrapper(student), teacher, "fsp")(IMAGES, LABELS)[1]["fsp_loss"], again, wrapped(
        IMAGES, LABELS)[1]["fsp_loss"]


def test_a_ddp_wrapped_student_is_tapped_inside_its_wrapper(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        plain, wrapped, named, prefixed = fsp_loss_through(nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
    assert plain > 0 and torch.equal(plain, wrapped) and named > 0 and torch.equal(named, prefixed)


def test_a_compiled_student_is_tapped_inside_its_wrapper():
    plain, compiled, named, prefixed = fsp_loss_through(lambda m: torch.compile(m, backend="eager"))
    assert plain > 0 and torch.allclose(plain, compiled) and named > 0 and torch.allclose(named, prefixed)


def test_different_widths_get_connectors_among_the_distillers_parameters():
    student, teacher = models("resnet8", "resnet8x4")
    distiller = Distiller(student, teacher, "fsp")
    distiller.check(IMAGES)
    own = {id(p) for p in student.parameters()}
    extra = [p for p in distiller.parameters() if id(p) not in own]
    assert extra and not any(id(p) in {id(q) for q in teacher.parameters()} for p in extra)
    _, losses = distiller(IMAGES, torch.zeros(len(IMAGES), dtype=torch.long))
    losses["loss"].backward()
    assert all(p.grad is not None for p in extra)
