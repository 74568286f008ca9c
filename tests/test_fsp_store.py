"""Stored teacher FSP targets: equal to the live teacher's for the view the student sees, keyed, reused."""

import dataclasses
import json
import re

import pytest
import torch

from fspkd.accel import fsp_store
from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.data import BatchLoader
from fspkd.data.augment import FixedViews
from fspkd.methods.fsp import FSP
from fspkd.models import create

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def make_images(count=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)


def make_loader(images, augment=True, flip=True, mean=MEAN):
    labels = torch.arange(len(images)) % 10
    return BatchLoader(images, labels, 16, mean=mean, std=STD, train=True, augment=augment, flip=flip, seed=3)


def make_method(teacher_seed=0, **config):
    torch.manual_seed(teacher_seed)
    teacher = create("resnet8", num_classes=10)
    torch.manual_seed(1)
    student = create("resnet8", num_classes=10)
    return FSP(student, teacher, RunConfig(method="fsp", **config))


def bind(method, loader, tmp_path, views=3, dtype="float32"):
    return fsp_store.stored_targets(method.teacher, method.live_teacher_matrices, method.teacher_pairs, loader,
                                    views=views, dtype=dtype, folder=tmp_path)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 2e-3)])
def test_stored_targets_equal_the_live_teacher_for_the_view_of_each_sample(tmp_path, dtype, tolerance):
    method, loader = make_method(), make_loader(make_images())
    targets = bind(method, loader, tmp_path, dtype=dtype)
    batches = iter(loader)
    for _ in range(5):  # more than one epoch: fresh view choices
        images, _ = next(batches)
        stored, live = targets(images), method.live_teacher_matrices(images)
        assert len(stored) == len(live) == 3
        for g_stored, g_live in zip(stored, live):
            assert g_stored.dtype == torch.float32
            torch.testing.assert_close(g_stored, g_live, rtol=tolerance, atol=tolerance * g_live.abs().max())


def test_loader_renders_each_sample_as_one_of_its_views_and_varies_them_by_epoch(tmp_path):
    images = make_images()
    loader = make_loader(images)
    views = FixedViews.draw(len(images), 3, 4, True, seed=5)
    loader.use_views(views)
    chosen = []
    for batch, _ in zip(iter(loader), range(6)):
        indices, view_ids = loader.last_batch_keys
        expected = loader.normalise(views.render(images, indices, view_ids))
        assert torch.equal(batch[0], expected)
        chosen.append(view_ids)
    epoch1, epoch2 = torch.cat(chosen[:3]), torch.cat(chosen[3:])
    assert set(epoch1.tolist()) == {0, 1, 2} and not torch.equal(epoch1, epoch2)


def test_without_augmentation_the_store_holds_the_plain_images(tmp_path):
    images = make_images()
    method, loader = make_method(), make_loader(images, augment=False)
    targets = bind(method, loader, tmp_path, views=5)
    assert targets.store.views.count == 1
    batch, _ = next(iter(loader))
    indices, _ = loader.last_batch_keys
    assert torch.equal(batch, loader.normalise(images[indices]))


def store_files(tmp_path):
    return sorted(p.name for p in tmp_path.glob("*.npy") if not p.name.endswith(".views.npy"))


def test_a_store_is_reused_and_not_rebuilt(tmp_path, monkeypatch):
    images = make_images()
    bind(make_method(), make_loader(images), tmp_path)
    first = store_files(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the store was rebuilt")

    monkeypatch.setattr(fsp_store, "build", refuse)
    other_student = make_method()
    bind(other_student, make_loader(images), tmp_path)  # same teacher, data, taps, views: same store
    assert store_files(tmp_path) == first and len(first) == 1


@pytest.mark.parametrize("change", ["teacher", "data", "pairs", "normalisation", "views", "dtype", "flip"])
def test_a_store_is_invalidated_when_what_it_depends_on_changes(tmp_path, change):
    images = make_images()
    bind(make_method(), make_loader(images), tmp_path)
    method = make_method(teacher_seed=7 if change == "teacher" else 0,
                         fsp_pre_relu=change == "pairs")
    data = images.clone()
    if change == "data":
        data[0, 0, 0, 0] ^= 1
    loader = make_loader(data, mean=(0.4, 0.4, 0.4) if change == "normalisation" else MEAN,
                         flip=change != "flip")
    bind(method, loader, tmp_path, views=2 if change == "views" else 3,
         dtype="float16" if change == "dtype" else "float32")
    assert len(store_files(tmp_path)) == 2


def test_the_store_describes_itself(tmp_path):
    method = make_method()
    bind(method, make_loader(make_images()), tmp_path)
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["shapes"] == [[16, 16], [16, 32], [32, 64]] and meta["views"] == 3 and meta["images"] == 48


def test_stored_targets_refuse_a_batch_the_loader_did_not_give(tmp_path):
    method, loader = make_method(), make_loader(make_images())
    targets = bind(method, loader, tmp_path)
    with pytest.raises(FspkdError, match="loader"):
        targets(torch.zeros(4, 3, 32, 32))


def test_bad_store_settings_are_refused(tmp_path):
    method, loader = make_method(), make_loader(make_images())
    with pytest.raises(FspkdError, match="dtype"):
        bind(method, loader, tmp_path, dtype="int8")
    with pytest.raises(FspkdError, match="views"):
        RunConfig(stored_fsp_views=0).validate()


def test_an_fsp_run_with_stored_targets_trains_stage1_and_task(tmp_path, monkeypatch):
    from fspkd.training.run import train

    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))
    base = RunConfig(data="synthetic:320,100", model="resnet8", batch_size=32, eval_every=4, augment=True,
                     task=Schedule(iterations=4, lr=0.05))
    train(base, tmp_path / "teacher", progress=False)
    config = dataclasses.replace(base, method="fsp", teacher=str(tmp_path / "teacher"), stored_fsp=True,
                                 shuffle_seed=1, stage1=Schedule(iterations=8, lr=1e-4))
    summary = train(config, tmp_path / "student", progress=False)
    assert summary["stages"]["stage1"]["iterations"] == 8
    assert summary["stages"]["stage1"]["setup_s"] > 0  # the store's build counts in the run's wall time
    steps_and_setups = sum(s["wall_s"] + s.get("setup_s", 0) for s in summary["stages"].values())
    assert summary["total_wall_s"] == pytest.approx(steps_and_setups)
    assert len(list((tmp_path / "cache" / "fsp-targets").glob("*.views.npy"))) == 1


def _rank_reads_store(rank, folder, init_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        method, loader = make_method(), make_loader(make_images())
        targets = bind(method, loader, folder)
        images, _ = next(iter(loader))
        for g_stored, g_live in zip(targets(images), method.live_teacher_matrices(images)):
            torch.testing.assert_close(g_stored, g_live, rtol=0, atol=0)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_share_one_store_built_once(tmp_path):
    torch.multiprocessing.spawn(_rank_reads_store, args=(tmp_path / "store", tmp_path / "init"), nprocs=2)
    assert len(store_files(tmp_path / "store")) == 1
    assert not list((tmp_path / "store").glob("*.tmp"))


def test_a_compiled_teacher_gives_the_eager_teacher_s_matrices():
    images = torch.randn(4, 3, 32, 32)
    eager = make_method().live_teacher_matrices(images)
    compiled = make_method(compile_teacher=True).live_teacher_matrices(images)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- stored_fsp: auto ----------------------------------------------------------------------------------------------

def test_the_store_pays_from_as_many_stage1_forwards_as_its_build_takes(tmp_path):
    method = make_method()

    def pays(loader, forwards):
        return fsp_store.store_pays(method.teacher, method.live_teacher_matrices, method.teacher_pairs, loader,
                                    forwards, views=3, dtype="float32", folder=tmp_path)[0]

    augmented, plain = make_loader(make_images()), make_loader(make_images(), augment=False)
    assert not pays(augmented, 48 * 3 - 1) and pays(augmented, 48 * 3)  # 48 images x 3 views
    assert not pays(plain, 47) and pays(plain, 48)  # one view: the image itself
    bind(method, augmented, tmp_path)
    assert pays(augmented, 1)  # built: free from then on


def test_the_store_pays_only_where_it_fits_half_the_free_disk_and_half_the_memory(tmp_path, monkeypatch):
    method, loader = make_method(), make_loader(make_images())
    # ResNet-8's pairs: 16x16, 16x32, 32x64 entries, float32, 48 images x 3 views
    size = 48 * 3 * (16 * 16 + 16 * 32 + 32 * 64) * 4

    def pays(free, memory):
        monkeypatch.setattr(fsp_store, "free_bytes", lambda folder: free)
        monkeypatch.setattr(fsp_store, "memory_bytes", lambda: memory)
        return fsp_store.store_pays(method.teacher, method.live_teacher_matrices, method.teacher_pairs, loader,
                                    10**6, views=3, dtype="float32", folder=tmp_path)

    assert pays(2 * size, 2 * size)[0]
    stored, why = pays(2 * size - 2, 10**12)
    assert not stored and f"would take {size / 1e9:.1f} GB" in why and f"free in {tmp_path}" in why
    stored, why = pays(10**12, 2 * size - 2)
    assert not stored and "of memory" in why


def test_a_store_that_does_not_fit_its_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    method, loader = make_method(), make_loader(make_images())
    monkeypatch.setattr(fsp_store, "free_bytes", lambda folder: 1000)
    with pytest.raises(FspkdError, match=re.escape(str(tmp_path)) + r": stored teacher FSP needs .* GB, 0.0 GB free"):
        bind(method, loader, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from fspkd.training.run import train

    out = tmp_path_factory.mktemp("teacher") / "run"
    train(RunConfig(data="synthetic:320,100", model="resnet8", batch_size=32, eval_every=4,
                    task=Schedule(iterations=4, lr=0.05)), out, progress=False)
    return out


def auto(teacher_run, stage1_iterations: int, **overrides) -> RunConfig:
    """An FSP run with stored_fsp auto. 320 training images x 1 view: the store's build takes as many teacher
    forwards as a stage 1 of 10 steps of 32 images."""
    config = RunConfig(data="synthetic:320,100", model="resnet8", batch_size=32, eval_every=4, augment=True,
                       method="fsp", teacher=str(teacher_run), stored_fsp_views=1, stored_fsp_dtype="float32",
                       stage1=Schedule(iterations=stage1_iterations, lr=1e-4), task=Schedule(iterations=2, lr=0.05))
    return dataclasses.replace(config, **overrides)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fsp-targets"


def test_auto_runs_a_short_stage1_live_a_long_one_stored_and_then_reuses_the_store(teacher_run, tmp_path, cache):
    from fspkd.training.run import train

    assert train(auto(teacher_run, 9), tmp_path / "short", progress=False)["stored_fsp"] is False
    assert not list(cache.glob("*.npy"))
    assert train(auto(teacher_run, 10), tmp_path / "long", progress=False)["stored_fsp"] is True
    assert len(store_files(cache)) == 1
    assert train(auto(teacher_run, 9, seed=1), tmp_path / "again", progress=False)["stored_fsp"] is True


def test_auto_runs_live_where_the_store_cannot_serve_and_true_keeps_its_error(teacher_run, tmp_path, cache):
    from fspkd.training.run import train

    # the store serves whole loader batches, not micro-batches
    assert train(auto(teacher_run, 10, micro_batches=2), tmp_path / "auto", progress=False)["stored_fsp"] is False
    assert not list(cache.glob("*.npy"))
    with pytest.raises(FspkdError, match="loader bound to the store"):
        train(auto(teacher_run, 10, micro_batches=2, stored_fsp=True), tmp_path / "true", progress=False)
    kd = train(auto(teacher_run, 10, method="kd", stage1=None), tmp_path / "kd", progress=False)
    assert "stored_fsp" not in kd


def test_a_forced_store_that_would_not_fit_its_disk_stops_the_dry_run_and_leaves_nothing(teacher_run, tmp_path,
                                                                                         cache, monkeypatch):
    from fspkd.training.run import train

    monkeypatch.setattr(fsp_store, "free_bytes", lambda folder: 1000)
    with pytest.raises(FspkdError, match="stored teacher FSP needs .* GB, 0.0 GB free there"):
        train(auto(teacher_run, 10, stored_fsp=True), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and not cache.exists()
    assert train(auto(teacher_run, 10), tmp_path / "auto", progress=False)["stored_fsp"] is False  # auto: live


def test_a_resumed_run_keeps_the_decision_made_at_its_start(teacher_run, tmp_path, cache, monkeypatch):
    from interrupts import train_until_interrupted

    from fspkd.core.checkpoint import load_checkpoint
    from fspkd.training.run import train

    config = auto(teacher_run, 9)  # live: no store yet, fewer forwards than its build
    train(config, tmp_path / "straight", progress=False)
    train_until_interrupted(config, tmp_path / "resumed", monkeypatch, at_call=6)  # after the checkpoint at 4
    train(auto(teacher_run, 10), tmp_path / "other", progress=False)  # meanwhile the store is built
    summary = train(config, tmp_path / "resumed", resume=True, progress=False)
    assert summary["stored_fsp"] is False
    a, b = (load_checkpoint(tmp_path / run / "final.pt")["model"] for run in ("straight", "resumed"))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_run_saved_with_a_choice_resumes_under_auto_and_keeps_it(teacher_run, tmp_path, cache):
    from fspkd.training.run import train

    chosen = train(auto(teacher_run, 2, stored_fsp=False), tmp_path / "run", progress=False)
    assert train(auto(teacher_run, 2), tmp_path / "run", resume=True, progress=False) == chosen
    with pytest.raises(FspkdError, match="differ .* in stored_fsp"):
        train(auto(teacher_run, 2, stored_fsp=True), tmp_path / "run", resume=True, progress=False)
