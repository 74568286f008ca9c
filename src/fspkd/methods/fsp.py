"""The paper's Algorithm 1: stage 1 fits the student's FSP matrices to the teacher's, then the task stage trains
the student on the task."""

from __future__ import annotations

import torch

from fspkd.accel.fast_teacher import inference_teacher
from fspkd.core.connectors import Connectors, design_name, tap_widths
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import ChannelShuffle, fsp_loss, fsp_matrix
from fspkd.core.taps import FeatureTaps, parse_tap
from fspkd.methods.base import Method, eval_mode
from fspkd.models import create


def declared_pairs(model, explicit, first: str, role: str, pre_relu: bool = False) -> list[tuple[str, str]]:
    """FSP tap pairs: the explicit ``[[a, b], ...]`` if given, else those the model declares."""
    if explicit:
        return [tuple(p) for p in explicit]
    if not hasattr(model, "fsp_pairs"):
        raise FspkdError(
            f"the {role} model declares no FSP tap points; name them with --fsp-pairs 'a>b,c>d' (module paths)"
        )
    return [tuple(p) for p in model.fsp_pairs(first, pre_relu=pre_relu)]


def section_start(first: str, *models) -> str:
    """The section start both networks' pairs use: ``first``, except that "after" (the first block's output)
    becomes "before" when either network has a section of a single block (ResNet-8). There the first block's
    output is the section's output: its pair would hold one map twice (a Gram matrix, not a flow), and teacher and
    student must take their sections' starts alike for their matrices to match."""
    if first == "after" and any(getattr(model, "has_one_block_section", False) for model in models):
        return "before"
    return first


class FSP(Method):
    """Stage 1: minimise the FSP loss only (teacher fixed). Task stage: cross-entropy only, from the stage-1
    weights."""

    name = "fsp"
    stages = ("stage1", "task")
    feature_stages = ("stage1",)
    needs_teacher = True

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        self.section_start = section_start(config.fsp_first, student, teacher)
        self.student_pairs = declared_pairs(student, config.fsp_pairs, self.section_start, "student",
                                            config.fsp_pre_relu)
        self.teacher_pairs = declared_pairs(teacher, config.teacher_fsp_pairs or config.fsp_pairs, self.section_start,
                                            "teacher", config.fsp_pre_relu)
        if len(self.student_pairs) != len(self.teacher_pairs):
            raise FspkdError(
                f"the student has {len(self.student_pairs)} FSP pairs and the teacher {len(self.teacher_pairs)}; "
                "they need one pair each per section"
            )
        self.student_taps = FeatureTaps(student, _unique(self.student_pairs))
        teacher_taps = _unique(self.teacher_pairs)
        runner, self.teacher_forward = teacher, teacher
        if config.fast_teacher:  # a BatchNorm-folded (channels-last on CPU) copy runs; self.teacher stays as loaded
            runner, self.teacher_forward = inference_teacher(teacher, keep=[parse_tap(t)[0] for t in teacher_taps])
        self.teacher_taps = FeatureTaps(runner, teacher_taps)
        self.shuffle: ChannelShuffle | None = None
        self.connectors: Connectors | None = None  # built by check() where the widths differ
        self.stored_targets = None  # stage-1 target provider (fspkd.accel.fsp_store) when the store is used
        if config.compile_teacher:  # faster live stage-1 steps after a compilation (see fspkd bench --compile)
            self.teacher_forward = torch.compile(self.teacher_forward)

    def check(self, example):
        """Compare FSP matrix shapes pair by pair; build the connectors where the widths differ and the shuffle,
        once the channel counts are known."""
        with torch.no_grad():
            with eval_mode(self.student):
                student_g = self.student_matrices(example[:2])
            teacher_g = self.live_teacher_matrices(example[:2])
        if any(gs.shape[1:] != gt.shape[1:] for gs, gt in zip(student_g, teacher_g)):
            self.connect(student_g, teacher_g, example.device)
        if self.config.shuffle_seed is not None:
            channels = {}
            for (first, second), g in zip(self.teacher_pairs, teacher_g):
                channels[first], channels[second] = g.shape[1], g.shape[2]
            groups = None
            if hasattr(self.teacher, "fsp_permutation_groups"):
                groups = self.teacher.fsp_permutation_groups(self.section_start, self.config.fsp_pre_relu)
            self.shuffle = ChannelShuffle(self.teacher_pairs, channels, self.config.shuffle_seed, groups)

    def connect(self, student_g, teacher_g, device) -> None:
        """Connectors for the taps whose widths differ; with ``fsp_connector: none`` the widths must be equal."""
        if self.config.fsp_connector == "none":
            bad = [
                f"pair {i + 1} ({s_pair[0]} -> {s_pair[1]}): student {tuple(gs.shape[1:])}, "
                f"teacher {tuple(gt.shape[1:])}"
                for i, (s_pair, gs, gt) in enumerate(zip(self.student_pairs, student_g, teacher_g))
                if gs.shape[1:] != gt.shape[1:]
            ]
            raise FspkdError(
                "FSP needs equal channel widths at both ends of every pair (--fsp-connector none); "
                + "; ".join(bad)
                + f". Would fit: {_what_fits(self.config, student_g, teacher_g)}, or learned connectors "
                "(--fsp-connector auto)"
            )
        widths = tap_widths(self.student_pairs, self.teacher_pairs, student_g, teacher_g)
        self.connectors = Connectors(design_name(self.config.fsp_connector), widths).to(device)

    def extra_modules(self, stage):
        """The connectors, trained in stage 1 only (the task stage trains the student alone)."""
        return {"connectors": self.connectors} if stage == "stage1" and self.connectors is not None else {}

    def student_matrices(self, images, forward=None):
        """The student's FSP matrices of ``images``, through the connectors (the teacher's shapes) if any."""
        (forward or self.student)(images)
        if self.connectors is not None:
            return self.connectors.matrices(self.student_taps.features, self.student_pairs, self.teacher_pairs)
        return _matrices(self.student_taps, self.student_pairs, "student")

    @torch.inference_mode()
    def live_teacher_matrices(self, images):
        """The teacher's own FSP matrices: one forward pass, no graph."""
        self.teacher_forward(images)
        matrices = _matrices(self.teacher_taps, self.teacher_pairs, "teacher")
        self.teacher_taps.clear()
        return matrices

    # -- stored teacher targets (fspkd.accel.fsp_store): stage 1 without running the teacher --------------------
    def bind_loader(self, stage, loader):
        """Where stage 1 stores its teacher FSP (``stored_fsp``, decided at its start and kept by a resume), it reads
        its targets from the store of this loader's data (built if new). Returns the decision of ``auto`` in words."""
        self.stored_targets, note = None, None
        if stage != "stage1":
            return None
        from fspkd.accel.fsp_store import stored_targets

        if self.uses_stored_fsp is None:
            self.uses_stored_fsp, note = self._choose_store(loader)
        if self.uses_stored_fsp:
            self.stored_targets = stored_targets(
                self.teacher, self.live_teacher_matrices, self.teacher_pairs, loader,
                views=self.config.stored_fsp_views, dtype=self.config.stored_fsp_dtype,
            )
        return note

    def check_loader(self, loader) -> None:
        """The dry run of a forced store (``stored_fsp: true``): one that is not built must fit its disk."""
        if self.config.stored_fsp is True:
            from fspkd.accel.fsp_store import check_store_room

            check_store_room(self.teacher, self.live_teacher_matrices, self.teacher_pairs, loader,
                             views=self.config.stored_fsp_views, dtype=self.config.stored_fsp_dtype)

    def _choose_store(self, loader) -> tuple[bool, str | None]:
        """``stored_fsp`` as set, or for ``auto`` the rule of ``fspkd.accel.fsp_store.store_pays``; live where the
        store cannot serve (micro-batches: it serves whole loader batches only)."""
        config = self.config
        if config.stored_fsp != "auto":
            return config.stored_fsp, None
        if config.micro_batches > 1:
            return False, None
        from fspkd.accel.fsp_store import store_pays

        return store_pays(self.teacher, self.live_teacher_matrices, self.teacher_pairs, loader,
                          config.stage1.iterations * config.batch_size, views=config.stored_fsp_views,
                          dtype=config.stored_fsp_dtype)

    def teacher_matrices(self, images):
        """The stage-1 targets of ``images``: the teacher's FSP matrices (live or stored), channel-shuffled if
        configured."""
        if self.stored_targets is None:
            matrices = [g.clone() for g in self.live_teacher_matrices(images)]  # out of inference mode for autograd
        else:
            matrices = self.stored_targets(images)
        return self.shuffle(matrices) if self.shuffle is not None else matrices

    def step(self, stage, images, labels, progress, forward=None):
        if stage == "task":
            return super().step(stage, images, labels, progress, forward)
        student_g = self.student_matrices(images, forward)
        teacher_g = self.teacher_matrices(images)
        if self.config.fsp_normalize == "frobenius":
            student_g, teacher_g = unit_matrices(student_g), unit_matrices(teacher_g)
        loss = fsp_loss(student_g, teacher_g, self.config.fsp_lambda)
        return {"loss": loss, "logits": None, "parts": {"fsp_loss": loss}}

    def close(self):
        self.student_taps.remove()
        self.teacher_taps.remove()


def _what_fits(config, student_g, teacher_g) -> str:
    """A student that would fit: the teacher's widths at every tap, and the width multiplier giving them."""
    wanted = ", ".join(str(tuple(g.shape[1:])) for g in teacher_g)
    text = f"a student with the teacher's widths {wanted} at its tap points"
    ratios = {gt.shape[d] / gs.shape[d] for gs, gt in zip(student_g, teacher_g) for d in (1, 2)}
    width = config.model_options.get("width", 1) * ratios.pop() if len(ratios) == 1 else 0
    if width >= 1 and width == int(width) and _takes_width(config, int(width)):
        text += f", e.g. --model {config.model} --model-option width={int(width)}"
    return text + ", or other tap points (--fsp-pairs)"


def _takes_width(config, width: int) -> bool:
    try:
        create(config.model, **{**config.model_options, "width": width})
    except (FspkdError, TypeError):
        return False
    return True


def _unique(pairs):
    return list(dict.fromkeys(tap for pair in pairs for tap in pair))


def _matrices(taps, pairs, role: str):
    features = taps.features
    return [_pair_matrix(features[a], features[b], a, b, role) for a, b in pairs]


def _pair_matrix(a, b, first: str, second: str, role: str):
    """Eq. 1 of one pair, or a one-line error naming the pair's layers and shapes (maps whose spatial sizes no
    max pooling matches, maps that are not 4-D)."""
    try:
        return fsp_matrix(a, b)
    except ValueError as err:
        reason = str(err).removeprefix("fsp_matrix ")
        raise FspkdError(
            f"the {role}'s FSP pair {first} -> {second} has maps of shapes {tuple(a.shape[1:])} and "
            f"{tuple(b.shape[1:])} (channels, height, width): {reason}; choose other tap points (--fsp-pairs, "
            "--teacher-fsp-pairs) or another input size"
        ) from None


# -- beyond the paper (docs/findings.md) ---------------------------------------------------------------------------


def unit_matrices(matrices):
    """Each sample's FSP matrix divided by its Frobenius norm (``fsp_normalize: frobenius``).

    The paper's raw Eq. 1 matrices grow with the feature magnitudes (the loss starts near 4e4 on CIFAR ResNets),
    so the stage-1 learning rate depends on the scale of the activations; unit matrices make every pair's term
    lie in [0, 4] and leave only the direction of the flow to be matched.
    """
    return [g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None] for g in matrices]
