"""``fspkd bench``: what stage 1 costs against plain training, live teacher and stored FSP, and the data path.

Everything is measured in one process on the same batches, cases interleaved within each repeat (so a busy
machine slows them alike), after one warm-up repeat; the median over repeats is reported. Per teacher:student
pair it times one optimiser step of (1) plain training of the student, (2) stage 1 with the live teacher,
(3) stage 1 with stored teacher FSP (``fspkd.accel.fsp_store``), (4) the FSP matrices + loss alone (forward and
backward) against a naive broadcast-and-sum reference, and, once, (5) one batch of our ``BatchLoader``
against a per-image Pillow pipeline through ``torch.utils.data.DataLoader`` (pad-4 random crop, flip,
to-tensor, normalise, image by image, as torchvision's transforms do); for the first pair of equal FSP widths, a
stage-1 step through ``fspkd.Distiller`` and through the engine against the same step written by hand
(``experiments.overhead``); a pair of other widths takes its stage-1 steps through the connectors;
(6) the peak memory of each case
(resident set growth on CPU, from the kernel's high-water mark; allocator peak on CUDA). Networks are freshly
initialised and images random: speed does not depend on trained weights. Every case runs in the training
default layout, channels-last (``channels_last=False``: NCHW); ``compare_layouts`` adds the step cases in the
other layout.
"""

from __future__ import annotations

import copy
import ctypes
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fspkd.accel.fsp_store import StoredTargets, stored_targets
from fspkd.core.config import RunConfig
from fspkd.core.fsp import fsp_loss, fsp_matrix
from fspkd.data import BatchLoader
from fspkd.experiments.overhead import bench_overhead
from fspkd.methods.base import Method
from fspkd.methods.fsp import FSP
from fspkd.models import create
from fspkd.training.distributed import resolve_device

DEFAULT_PAIRS = (("resnet26", "resnet26"), ("resnet56", "resnet20"))
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BATCHES = 4  # distinct batches cycled through by the step cases
DATA_BATCHES = 100  # batches per epoch in the data-path case (whole-epoch augmentation is amortised over them)


def run_bench(pairs=DEFAULT_PAIRS, *, batch_size: int = 128, repeats: int = 10, steps: int = 1,
              channels_last: bool = True, compare_layouts: bool = False, compile_teacher: bool = False,
              device: str = "cpu", thread_counts: Sequence[int] = (), fsp_first: str = "before",
              log: Callable[[str], None] = print) -> dict:
    """Measure every case for every (teacher, student) pair; returns times (ms), peaks (MB) and ratios.
    ``fsp_first`` picks the FSP taps: sections start before their down-sampling block (the paper's; two of three
    pairs max-pool) or after it (the fast recipe's; no pooling, larger matrix products)."""
    target = resolve_device(device)  # a device this machine lacks: one line naming those it has
    torch.manual_seed(0)
    images = torch.randint(0, 256, (BATCHES * batch_size, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(len(images)) % 10
    results = {"settings": {"batch_size": batch_size, "repeats": repeats, "steps_per_repeat": steps,
                            "channels_last": channels_last, "compare_layouts": compare_layouts,
                            "compile_teacher": compile_teacher,
                            "device": device, "threads": torch.get_num_threads(), "fsp_first": fsp_first,
                            "load_average": _load_average()},
               "data": bench_data(batch_size, repeats, log)}
    for teacher_name, student_name in pairs:
        log(f"timing {teacher_name} -> {student_name} ...")
        pair = bench_pair(teacher_name, student_name, images, labels, batch_size=batch_size, repeats=repeats,
                          steps=steps, channels_last=channels_last, compare_layouts=compare_layouts,
                          compile_teacher=compile_teacher,
                          device=target, thread_counts=thread_counts, fsp_first=fsp_first)
        data_ms = results["data"]["ms"]["batch_loader"]
        pair["ratios"].update(
            data_speedup_over_per_image=results["data"]["ms"]["per_image_pil"] / data_ms,
            data_share_of_step=data_ms / (data_ms + pair["ms"]["plain"]),
        )
        results[f"{teacher_name}:{student_name}"] = pair
    # the hand-written step has no connectors: the first pair of equal FSP widths
    equal = [pair for pair in pairs if not results[f"{pair[0]}:{pair[1]}"]["connectors"]]
    if not equal:
        log("no pair of equal FSP widths: the Distiller and the engine are not timed against a hand-written step")
        return results
    teacher_name, student_name = equal[0]
    log(f"timing the Distiller and the engine against a hand-written step, {teacher_name} -> {student_name} ...")
    batches = [(x.to(target, memory_format=_memory_format(channels_last)), y.to(target)) for x, y in
               _take(BatchLoader(images, labels, batch_size, mean=MEAN, std=STD, train=True, augment=True), BATCHES)]
    results["overhead"] = bench_overhead(_network(student_name, 2, target, channels_last),
                                         _network(teacher_name, 1, target, channels_last),
                                         batches, repeats=repeats, device=target)
    return results


# ---- training steps ------------------------------------------------------------------------------------------

def bench_pair(teacher_name: str, student_name: str, images, labels, *, batch_size: int, repeats: int,
               steps: int, channels_last: bool, compile_teacher: bool, device: torch.device,
               compare_layouts: bool = False, thread_counts: Sequence[int] = (), fsp_first: str = "before") -> dict:
    """Time the step cases of one teacher/student pair on ``BATCHES`` pre-fetched batches.

    The stored case reads float32 targets (freshly initialised deep teachers overflow float16); training runs
    read float16 by default, which costs no more.
    """
    teacher = _network(teacher_name, 1, device, channels_last)
    student = _network(student_name, 2, device, channels_last)
    config = RunConfig(method="fsp", model=student_name, fsp_first=fsp_first)
    plain = Method(copy.deepcopy(student), None, config)
    live = FSP(copy.deepcopy(student), teacher, config)
    live_as_loaded = FSP(copy.deepcopy(student), teacher, replace(config, fast_teacher=False))
    stored = FSP(copy.deepcopy(student), teacher, config)
    loader = BatchLoader(images, labels, batch_size, mean=MEAN, std=STD, train=True, augment=True)
    with tempfile.TemporaryDirectory() as folder:
        targets = stored_targets(teacher, stored.live_teacher_matrices, stored.teacher_pairs, loader,
                                 views=2, dtype="float32", folder=folder)  # random-init teachers overflow fp16
        batches = [(x.to(device, memory_format=_memory_format(channels_last)), y.to(device), loader.last_batch_keys)
                   for x, y in _take(loader, BATCHES)]
        keys = _KeyHolder()
        for method in (live, live_as_loaded, stored):  # connectors where the pair's widths differ
            method.check(batches[0][0])
        stored.stored_targets = StoredTargets(targets.store, keys)
        cases = {"plain": _stepper(plain, "task", batches, keys),
                 "stage1_live": _stepper(live, "stage1", batches, keys),
                 "stage1_live_no_fast_teacher": _stepper(live_as_loaded, "stage1", batches, keys),
                 "stage1_stored": _stepper(stored, "stage1", batches, keys)}
        other = ("nchw" if channels_last else "channels_last") if compare_layouts else None
        variants, extra = _variants(student, teacher, config, batches, keys, stored.stored_targets,
                                    other, compile_teacher)
        cases.update(variants)
        for count in thread_counts:  # the plain step again with another intra-op thread count
            cases[f"plain_threads_{count}"] = _with_threads(count, cases["plain"])
        cases.update(_fsp_cases(live, batches[0][0]))
        ms, peak_mb = _measure(cases, repeats, steps)
    for method in (plain, live, live_as_loaded, stored):
        method.close()
    ratios = {"stage1_live_over_plain": ms["stage1_live"] / ms["plain"],
              "stage1_stored_over_plain": ms["stage1_stored"] / ms["plain"],
              "fast_teacher_live_speedup": ms["stage1_live_no_fast_teacher"] / ms["stage1_live"],
              "fsp_speedup_over_naive": ms["fsp_naive"] / ms["fsp_ours"]}
    if other:
        for case in ("plain", "stage1_live", "stage1_stored"):
            main, alternative = ms[case], ms[f"{case}_{other}"]
            nchw, cl = (main, alternative) if other == "channels_last" else (alternative, main)
            ratios[f"channels_last_{case.removeprefix('stage1_')}_speedup"] = nchw / cl
        for case in ("stage1_live", "stage1_stored"):
            ratios[f"{case}_over_plain_{other}"] = ms[f"{case}_{other}"] / ms[f"plain_{other}"]
    if compile_teacher:
        ratios["compiled_teacher_live_speedup"] = ms["stage1_live"] / ms["stage1_live_compiled"]
    return {"ms": ms, "peak_mb": peak_mb, "ratios": ratios, "connectors": live.connectors is not None, **extra}


def _with_threads(count: int, case: Callable[[int], None]) -> Callable[[int], None]:
    def run(i: int) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            case(i)
        finally:
            torch.set_num_threads(before)
    return run


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _variants(student, teacher, config, batches, keys, store_targets, other: str | None, compile_teacher: bool):
    """Optional side-by-side cases: the step cases in the ``other`` layout (``nchw`` or ``channels_last``, cases
    suffixed with it); a ``torch.compile``d live teacher."""
    cases, extra = {}, {}
    if other:
        layout = _memory_format(other == "channels_last")
        to_other = lambda net: copy.deepcopy(net).to(memory_format=layout)  # noqa: E731
        other_batches = [(x.contiguous(memory_format=layout), y, k) for x, y, k in batches]
        cases[f"plain_{other}"] = _stepper(Method(to_other(student), None, config), "task", other_batches, keys)
        other_live = FSP(to_other(student), to_other(teacher), config)
        other_live.check(other_batches[0][0])
        cases[f"stage1_live_{other}"] = _stepper(other_live, "stage1", other_batches, keys)
        other_stored = FSP(to_other(student), teacher, config)
        other_stored.check(other_batches[0][0])
        other_stored.stored_targets = store_targets
        cases[f"stage1_stored_{other}"] = _stepper(other_stored, "stage1", other_batches, keys)
    if compile_teacher:
        eager = [g.clone() for g in FSP(copy.deepcopy(student), teacher, config).live_teacher_matrices(batches[0][0])]
        compiled = FSP(copy.deepcopy(student), copy.deepcopy(teacher), replace(config, compile_teacher=True))
        same = compiled.live_teacher_matrices(batches[0][0])
        extra["compiled_teacher_max_rel_diff"] = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
                                                     for a, b in zip(eager, same))
        cases["stage1_live_compiled"] = _stepper(compiled, "stage1", batches, keys)
    return cases, extra


def _network(name: str, seed: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create(name, num_classes=10).to(device, memory_format=_memory_format(channels_last))


class _KeyHolder:
    """Stands in for the loader: which images and views the current pre-fetched batch holds."""

    last_batch_keys = None


def _take(loader, count):
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def _stepper(method, stage: str, batches, keys: _KeyHolder) -> Callable[[int], None]:
    """One full optimiser step of ``method`` in ``stage`` on batch ``i`` (cycled)."""
    optimizer = torch.optim.SGD([p for p in method.parameters(stage) if p.requires_grad], lr=1e-6, momentum=0.9)
    method.student.train()

    def step(i: int) -> None:
        images, labels, keys.last_batch_keys = batches[i % len(batches)]
        output = method.step(stage, images, labels, 0.0)
        optimizer.zero_grad(set_to_none=True)
        output["loss"].backward()
        optimizer.step()

    return step


def _fsp_cases(method: FSP, images) -> dict[str, Callable[[int], None]]:
    """The student's FSP matrices + loss alone (forward and backward), ours against the naive reference; the
    targets are matrices of the student's shapes (a teacher of other widths would need the connectors)."""
    with torch.no_grad():
        method.student(images)
        student_feats = {k: v.detach().clone() for k, v in method.student_taps.features.items()}
        pairs = method.student_pairs
        targets = [fsp_matrix(student_feats[a], student_feats[b]) for a, b in pairs]

    def run(matrix_fn):
        def case(i: int) -> None:
            feats = {k: v.clone().requires_grad_(True) for k, v in student_feats.items()}
            loss = fsp_loss([matrix_fn(feats[a], feats[b]) for a, b in pairs], targets)
            loss.backward()
        return case

    return {"fsp_ours": run(fsp_matrix), "fsp_naive": run(naive_fsp_matrix)}


def naive_fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 1 written the obvious way: every product F1[i] * F2[j] materialised, then averaged over positions."""
    if a.shape[-1] > b.shape[-1]:
        a = F.max_pool2d(a, a.shape[-1] // b.shape[-1])
    elif b.shape[-1] > a.shape[-1]:
        b = F.max_pool2d(b, b.shape[-1] // a.shape[-1])
    return (a[:, :, None] * b[:, None]).mean(dim=(-2, -1))


# ---- data path -----------------------------------------------------------------------------------------------

class PerImagePil(torch.utils.data.Dataset):
    """The usual per-image pipeline, by hand with Pillow: pad 4 + random 32x32 crop, random flip, to-tensor,
    normalise; one image per ``__getitem__``, as torchvision's CIFAR10 + transforms do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, pad: int = 4):
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C), like torchvision's
        self.labels, self.pad = labels, pad
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.arrays[index])
        width, height = image.size
        padded = Image.new(image.mode, (width + 2 * self.pad, height + 2 * self.pad))
        padded.paste(image, (self.pad, self.pad))
        top, left = np.random.randint(0, 2 * self.pad + 1, size=2)
        image = padded.crop((left, top, left + width, top + height))
        if np.random.rand() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        return (tensor - self.mean) / self.std, self.labels[index]


def bench_data(batch_size: int, repeats: int, log) -> dict:
    """ms per batch (median) of our whole-epoch loader and of the per-image Pillow pipeline, over epochs of
    ``DATA_BATCHES`` batches of random CIFAR-sized images."""
    log("timing the data path ...")
    images = torch.randint(0, 256, (DATA_BATCHES * batch_size, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(len(images)) % 10
    ours = BatchLoader(images, labels, batch_size, mean=MEAN, std=STD, train=True, augment=True, flip=True)
    reference = torch.utils.data.DataLoader(PerImagePil(images, labels), batch_size=batch_size, shuffle=True,
                                            drop_last=True, num_workers=0)
    per_epoch = len(ours)
    ours_iter = iter(ours)

    def our_epoch(i: int) -> None:  # includes the epoch's augmentation, amortised over its batches
        for _ in range(per_epoch):
            next(ours_iter)

    def reference_epoch(i: int) -> None:
        for _ in reference:
            pass

    ms, peak_mb = _measure({"batch_loader": our_epoch, "per_image_pil": reference_epoch}, repeats, 1)
    ms = {name: value / per_epoch for name, value in ms.items()}
    return {"ms": ms, "peak_mb": peak_mb, "batches_per_epoch": per_epoch}


# ---- timing and memory ---------------------------------------------------------------------------------------

def _measure(cases: dict[str, Callable[[int], None]], repeats: int, steps: int):
    """Median ms per call of each case over ``repeats`` interleaved repeats (after one warm-up), and peaks."""
    times = {name: [] for name in cases}
    peaks = {}
    for repeat in range(repeats + 1):
        for name, case in cases.items():
            _sync()
            started = time.perf_counter()
            for i in range(steps):
                case(i)
            _sync()
            if repeat:  # repeat 0 is the warm-up
                times[name].append(1000 * (time.perf_counter() - started) / steps)
    for name, case in cases.items():
        peaks[name] = _peak_mb(lambda: case(0))
    return {name: statistics.median(values) for name, values in times.items()}, peaks


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _peak_mb(call: Callable[[], None]) -> float | None:
    """Memory growth at the peak of ``call``: CUDA allocator peak, else resident-set high-water mark growth."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        _sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        _release_free_memory()
        Path("/proc/self/clear_refs").write_text("5")  # resets the kernel's peak-RSS counter (VmHWM)
        base = _status_kb("VmRSS")
        call()
        return max(0, _status_kb("VmHWM") - base) / 1024
    except OSError:
        return None


def _release_free_memory() -> None:
    """Hand memory freed by earlier cases back to the system (glibc keeps it), so it counts again as growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


# ---- report --------------------------------------------------------------------------------------------------

def format_table(results: dict) -> str:
    """Fixed-column table: one row per case and pair, then the ratios."""
    lines = [f"{'case':<42}{'ms':>10}{'x plain':>9}{'peak MB':>9}"]
    data = results["data"]
    for name in ("batch_loader", "per_image_pil"):
        lines.append(_row(f"data/{name} (per batch)", data["ms"][name], None, data["peak_mb"][name]))
    for key, pair in results.items():
        if key in ("settings", "data", "overhead"):
            continue
        for name, value in pair["ms"].items():
            relative = value / pair["ms"]["plain"] if not name.startswith("fsp_") else None
            for other in ("channels_last", "nchw"):
                if name.endswith(f"_{other}") and f"plain_{other}" in pair["ms"]:
                    relative = value / pair["ms"][f"plain_{other}"]
            lines.append(_row(f"{key} {name}", value, relative, pair["peak_mb"][name]))
        lines += [f"  {name} = {value:.3f}" for name, value in pair["ratios"].items()]
    if "overhead" in results:
        overhead = results["overhead"]
        lines += [_row(f"stage 1 step {name}", ms, None, None) for name, ms in overhead["ms"].items()]
        lines += [f"  {name} = {r['median']:.3f} (per-repeat range {r['min']:.3f} to {r['max']:.3f})"
                  for name, r in overhead["ratios"].items()]
    return "\n".join(lines)


def _row(name, ms, relative, peak) -> str:
    relative_text = f"{relative:9.2f}" if relative is not None else " " * 9
    peak_text = f"{peak:9.1f}" if peak is not None else f"{'n/a':>9}"
    return f"{name:<42}{ms:10.2f}{relative_text}{peak_text}"
