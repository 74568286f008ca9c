"""``fspkd.Distiller``: a method's losses as an ``nn.Module``, for any training loop (and for fspkd's own).

    distiller = fspkd.Distiller(student, teacher, method="fsp")   # settings: RunConfig keys, e.g. fsp_normalize=
    distiller.check(images)                  # dry run: pairs, shapes, class counts (FspkdError if they do not fit)
    distiller.stage = "stage1"               # FSP matrices (FitNet: hints) only; "task": cross-entropy + the method
    logits, losses = distiller(images, labels)   # losses["loss"] is the total, the others its named parts
    losses["loss"].backward()

The distiller owns a ``fspkd.methods.Method`` (the losses are the CLI's, not a copy) and resolves its settings with
``fspkd.resolve_config``, so the defaults and FSP recipes are those of ``fspkd distill``. The teacher is frozen, in
eval mode and kept outside the module tree: ``distiller.parameters()``, ``state_dict()`` and a DDP wrapper around
the distiller see the student and the extra learnable modules (FitNet's regressors) only; ``.to()`` moves the
teacher too. The student may be passed wrapped (DDP, ``torch.compile``): it runs through its wrapper and is
tapped inside it.

The method is set up on the first batch (``check`` or the first call), on that batch's device, because the FSP
pairs of a model that declares no sections are found by a dry run on it (``fspkd.core.autosections``). Create
the optimiser after ``check`` so that it holds FitNet's regressors, which are sized there.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from fspkd.core.autosections import auto_hint, auto_pairs, find_sections
from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.core.settings import resolve_config
from fspkd.core.taps import FeatureTaps, strip_wrapper_prefix, unwrap
from fspkd.methods import Method, get_method
from fspkd.methods.base import Forward, StepOutput
from fspkd.methods.fsp import section_start


class Distiller(nn.Module):
    """A student, a frozen teacher and a distillation method; ``forward(images, labels)`` returns
    ``(logits or None, {"loss": total, part name: part})``.

    ``method``: ``"fsp"``, ``"kd"``, ``"fitnet"`` or ``"plain"``. ``pairs``: FSP tap pairs ``[(first, last), ...]``
    of the student (module paths, ``:input`` for a module's input), ``teacher_pairs`` the teacher's when its names
    differ; for FitNet, the student's guided layer(s) and the teacher's hint layer(s). Without them, the pairs the
    models declare are used, else those found by a dry run. ``settings``: RunConfig keys (``fsp_normalize``,
    ``kd_temperature``, ``stage1={"iterations": 500}``, ...); ``config``: an already resolved RunConfig instead.
    ``example``: a batch to ``check`` at once.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, method: str = "fsp", pairs=None,
                 teacher_pairs=None, *, example: torch.Tensor | None = None, config: RunConfig | None = None,
                 **settings):
        super().__init__()
        if config is None:  # named after the student, so no message suggests a registry model it is not
            config = resolve_config({"method": method, **settings}, where="Distiller settings")
            config = dataclasses.replace(config, model=getattr(unwrap(student), "arch", type(unwrap(student)).__name__))
        elif settings:
            raise FspkdError(f"Distiller: give settings in config or as keywords, not both ({', '.join(settings)})")
        self.config = config
        self.method_class = get_method(config.method)
        if self.method_class.needs_teacher and teacher is None:
            raise FspkdError(f"Distiller: method {config.method!r} needs a teacher: Distiller(student, teacher, ...)")
        self.student = unwrap(student)  # the learnable network: tapped, saved, optimised
        self.__dict__["runner"] = student  # runs the student (its DDP / compiled wrapper when given one)
        self.__dict__["teacher"] = teacher  # outside the module tree: no parameters, no state_dict, no DDP
        self.__dict__["method"] = None  # built on the first batch (see the module docstring)
        # the taps go on the unwrapped student, so its paths lose a wrapper's prefix (a DDP path "module.layer1")
        self.pairs = _listed(pairs, strip=student is not self.student)
        self.teacher_pairs = _listed(teacher_pairs, strip=teacher is not None and unwrap(teacher) is not teacher)
        self.extras = nn.ModuleDict()  # learnable modules of the method (FitNet's regressors)
        self._stage = self.method_class.stages[0]
        self.progress = 0.0  # fraction of the stage done, 0 to 1: FitNet's task stage anneals its KD weight by it
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        if example is not None:
            self.check(example)

    # -- the stage ---------------------------------------------------------------------------------------------
    @property
    def stages(self) -> tuple[str, ...]:
        """The method's stages in order: ``("stage1", "task")`` for fsp and fitnet, ``("task",)`` otherwise."""
        return self.method_class.stages

    @property
    def stage(self) -> str:
        """The stage whose loss ``forward`` computes. ``"stage1"``: the FSP loss (FitNet: the hint loss) only, no
        logits; ``"task"``: cross-entropy plus what the method adds (KD's soft term). Starts at the first stage;
        set it (or call ``set_stage``) when stage 1 is done."""
        return self._stage

    @stage.setter
    def stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise FspkdError(f"Distiller: method {self.config.method!r} has stages {', '.join(self.stages)}, "
                             f"not {stage!r}")
        self._stage = stage

    def set_stage(self, stage: str) -> Distiller:
        """``self.stage = stage``, chainable."""
        self.stage = stage
        return self

    @property
    def schedule(self) -> Schedule:
        """The current stage's optimiser settings and lr schedule, as ``fspkd distill`` would run it."""
        return self.built().schedule(self.stage)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """An optimiser for the current stage's learnable parameters, set as the stage's schedule says."""
        return make_optimizer(self.schedule, self.built().parameters(self.stage))

    # -- set-up ------------------------------------------------------------------------------------------------
    def check(self, example: torch.Tensor, labels: torch.Tensor | None = None) -> Distiller:
        """Set the method up on ``example`` (a batch of images) if not yet, and dry-run it: every pair's taps,
        FSP matrix shapes, hint sizes, the teacher's and student's class counts (and ``labels`` against them).
        Raises FspkdError, with the CLI's messages, if anything does not fit. Later calls check the class counts
        only: the method's set-up (FitNet's regressors, which an optimiser may hold by then) is made once."""
        if self.method is None:
            method = self.method_class(self.student, self.teacher, self._method_config(example))
            try:
                method.check(example)
            except BaseException:
                method.close()  # no hooks left behind on the user's models
                raise
            self.__dict__["method"] = method
            self.extras = nn.ModuleDict({name: module for stage in self.stages
                                         for name, module in method.extra_modules(stage).items()})
        self._check_classes(example, labels)
        return self

    def built(self) -> Method:
        """The method, once ``check`` (or a first batch) has set it up."""
        if self.method is None:
            raise FspkdError("Distiller: call distiller.check(images) (or run one batch) first; the method is set "
                             "up on the first batch")
        return self.method

    def _method_config(self, example: torch.Tensor) -> RunConfig:
        """The settings the method runs with: the pairs given here, else declared, else found on ``example``."""
        config = self.config
        if config.method == "fsp":
            return self._fsp_config(config, example)
        if config.method == "fitnet":
            return self._fitnet_config(config, example)
        return config

    def _fsp_config(self, config: RunConfig, example: torch.Tensor) -> RunConfig:
        student_pairs = self.pairs or config.fsp_pairs
        teacher_pairs = self.teacher_pairs or config.teacher_fsp_pairs or student_pairs
        start = section_start(config.fsp_first, self.student, self.teacher)
        if student_pairs is None:
            student_pairs = _pairs(self.student, example, start, config.fsp_pre_relu)
        if teacher_pairs is None:
            teacher_pairs = _pairs(self.teacher, example, start, config.fsp_pre_relu)
        return dataclasses.replace(config, fsp_pairs=_listed(student_pairs), teacher_fsp_pairs=_listed(teacher_pairs))

    def _fitnet_config(self, config: RunConfig, example: torch.Tensor) -> RunConfig:
        guided = self.pairs or config.hint_layers or _hints(self.student, example, config.fitnet_hints)
        hints = self.teacher_pairs or config.teacher_hint_layers or _hints(self.teacher, example, config.fitnet_hints)
        return dataclasses.replace(config, hint_layers=list(guided), teacher_hint_layers=list(hints))

    @torch.no_grad()
    def _check_classes(self, example: torch.Tensor, labels: torch.Tensor | None) -> None:
        """The student's class count against the teacher's (when its outputs are used) and the labels."""
        was_training = self.student.training
        try:
            logits = self.student.eval()(example[:2])
        finally:
            self.student.train(was_training)
        if not isinstance(logits, torch.Tensor):  # a model returning more than class scores: nothing to compare
            return
        classes = logits.shape[-1]
        if self.teacher is not None and self.method.needs_teacher_outputs():
            theirs = self.teacher(example[:2]).shape[-1]
            if theirs != classes:
                raise FspkdError(f"the student has {classes} classes but the teacher {theirs}; {self.config.method} "
                                 "matches their class scores, so they need the same classes")
        if labels is not None and labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
            raise FspkdError(f"labels run from {int(labels.min())} to {int(labels.max())} but the student has "
                             f"{classes} classes (labels 0 to {classes - 1})")

    # -- the loss of one batch ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, labels: torch.Tensor, progress: float | None = None,
                forward: Forward | None = None):
        """``(logits or None, losses)`` of one batch in the current stage: ``losses["loss"]`` is the total to
        back-propagate, the other entries its named parts (``fsp_loss``, ``task_loss``, ``kd_loss``, ...).
        ``progress`` (default ``self.progress``) is the fraction of the stage done; ``forward`` runs the student
        instead of the student (or wrapper) given at construction (the CLI's per-stage DDP wrapper)."""
        output = self.step(images, labels, progress, forward)
        return output["logits"], {**output["parts"], "loss": output["loss"]}

    def step(self, images: torch.Tensor, labels: torch.Tensor, progress: float | None = None,
             forward: Forward | None = None) -> StepOutput:
        """The method's output of one batch: ``{"loss", "logits", "parts"}`` (what ``forward`` unpacks)."""
        if self.method is None:
            self.check(images)
        progress = self.progress if progress is None else progress
        runner = self.runner if forward is None else forward
        # its bound __call__, not the module: methods test ``forward or student``, and a compiled module refuses bool()
        return self.method.step(self.stage, images, labels, progress, runner.__call__)

    # -- module behaviour --------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        """Train mode for the student and extras; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.double()``, ... move the (unregistered) teacher with the student, and any
        copy of it the method runs (the FSP method's BatchNorm-folded teacher)."""
        super()._apply(fn, recurse)
        done = {id(module) for module in self.modules()}
        for module in self._hidden_modules():
            if id(module) not in done:
                module._apply(fn)
                done.update(id(m) for m in module.modules())
        return self

    def _hidden_modules(self) -> list[nn.Module]:
        """The teacher and the modules the method holds outside the distiller's tree (teacher copies, tapped
        runners)."""
        hidden = [self.teacher] if self.teacher is not None else []
        for value in vars(self.method).values() if self.method is not None else ():
            if isinstance(value, FeatureTaps):
                value = value.model
            if isinstance(value, nn.Module):
                hidden.append(value)
        return hidden

    def close(self) -> None:
        """Remove the method's hooks from student and teacher."""
        if self.method is not None:
            self.method.close()


def make_optimizer(schedule: Schedule, params) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, at the schedule's initial lr and weight decay, over the trainable ``params``."""
    params = [p for p in params if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)


def _pairs(model: nn.Module, example: torch.Tensor, start: str, pre_relu: bool) -> list[tuple[str, str]]:
    """The pairs ``model`` declares, or those a dry run on ``example`` finds."""
    if hasattr(model, "fsp_pairs"):
        return model.fsp_pairs(start, pre_relu=pre_relu)
    return auto_pairs(model, example)


def _hints(model: nn.Module, example: torch.Tensor, count: int) -> list[str]:
    """FitNet's hint taps: declared (one in the middle, or one per section), else found by a dry run."""
    if count == 1 and getattr(model, "hint_layer", None):
        return [model.hint_layer]
    if count > 1 and getattr(model, "section_outputs", None):
        return list(model.section_outputs)
    if count > 1:
        return [section.last for section in find_sections(model, example)]
    return [auto_hint(model, example)]


def _listed(pairs, strip: bool = False):
    """Pairs as lists (the RunConfig form), a bare tap kept as it is, wrapper prefixes removed when ``strip``;
    None stays None."""
    if pairs is None:
        return None
    name = strip_wrapper_prefix if strip else (lambda tap: tap)
    return [[name(t) for t in p] if isinstance(p, (list, tuple)) else name(p) for p in pairs]
