"""Every method's stages on tiny runs, the run folder's contents, resume, and the safety rules."""

import csv
import dataclasses
import json

import pytest
import torch
from interrupts import train_until_interrupted
from safetensors.torch import load_file

from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.training import build, inference
from fspkd.training.evaluate import disagreement
from fspkd.training.inference import evaluate_checkpoints
from fspkd.training.run import NonFiniteLoss, train


def tiny(**overrides) -> RunConfig:
    config = RunConfig(
        data="synthetic:320,100", model="resnet8", batch_size=32, eval_every=4, val_split=0.1,
        task=Schedule(iterations=6, lr=0.05, milestones=[3]),
    )
    return dataclasses.replace(config, **overrides)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(tiny(model="resnet14"), out, progress=False)
    return out


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plain_run_writes_config_metrics_checkpoints_and_summary(teacher_dir):
    summary = json.loads((teacher_dir / "summary.json").read_text())
    assert 0 <= summary["test_acc"] <= 100 and 0 <= summary["val_acc"] <= 100
    assert summary["stages"]["task"]["iterations"] == 6
    assert summary["stages"]["task"]["s_per_100_it"] > 0
    assert (teacher_dir / "config.yaml").exists()
    rows = read_rows(teacher_dir / "metrics.csv")
    assert [int(r["iteration"]) for r in rows if r["test_acc"]] == [4, 6]
    final = load_checkpoint(teacher_dir / "final.pt")
    assert final["model_name"] == "resnet14" and final["num_classes"] == 10


@pytest.mark.parametrize("method", ["fsp", "fitnet"])
def test_two_stage_methods_run_stage1_then_the_task(method, teacher_dir, tmp_path):
    config = tiny(method=method, teacher=str(teacher_dir), stage1=Schedule(iterations=4, lr=1e-4))
    summary = train(config, tmp_path / method, progress=False)
    assert list(summary["stages"]) == ["stage1", "task"]
    rows = read_rows(tmp_path / method / "metrics.csv")
    loss_column = {"fsp": "fsp_loss", "fitnet": "hint_loss"}[method]
    assert all(r[loss_column] for r in rows if r["stage"] == "stage1")
    assert all(r["task_loss"] and not r[loss_column] for r in rows if r["stage"] == "task")
    assert (tmp_path / method / "checkpoints" / "stage1.pt").exists()


def test_fsp_stage1_trains_only_towards_the_teacher_and_lowers_the_fsp_loss(teacher_dir, tmp_path, monkeypatch):
    loaded = []
    original_load_teacher = build.load_teacher

    def keep_the_teacher(*args):
        loaded.append(original_load_teacher(*args))
        return loaded[-1]

    monkeypatch.setattr(build, "load_teacher", keep_the_teacher)
    config = tiny(method="fsp", teacher=str(teacher_dir), stage1=Schedule(iterations=12, lr=1e-3),
                  fsp_lambda=0.01)
    train(config, tmp_path / "fsp", progress=False)
    losses = [float(r["fsp_loss"]) for r in read_rows(tmp_path / "fsp" / "metrics.csv") if r["fsp_loss"]]
    assert losses[-1] < losses[0]
    # the teacher the run used still holds the file's weights and BN statistics: frozen, in eval mode
    on_disk = load_checkpoint(teacher_dir / "final.pt")["model"]
    used = loaded[0].state_dict()
    assert all(torch.equal(on_disk[k], used[k]) for k in on_disk) and not loaded[0].training


def test_fsp_with_pre_relu_taps_and_a_shuffled_teacher(teacher_dir, tmp_path):
    config = tiny(method="fsp", teacher=str(teacher_dir), stage1=Schedule(iterations=2, lr=1e-4),
                  task=Schedule(iterations=2, lr=0.05), fsp_pre_relu=True, shuffle_seed=3)
    summary = train(config, tmp_path / "pre", progress=False)
    assert list(summary["stages"]) == ["stage1", "task"]
    assert all(float(r["fsp_loss"]) > 0 for r in read_rows(tmp_path / "pre" / "metrics.csv") if r["stage"] == "stage1")


def test_kd_and_copy_run(teacher_dir, tmp_path):
    kd = train(tiny(method="kd", teacher=str(teacher_dir)), tmp_path / "kd", progress=False)
    assert kd["stages"]["task"]["iterations"] == 6
    copy = train(tiny(method="copy", model="resnet14", teacher=str(teacher_dir), task=Schedule(iterations=1, lr=1e-9),
                      students=2), tmp_path / "copy", progress=False)
    # one step at a tiny lr from the teacher's weights keeps the teacher's accuracy, for every copy (the paper's
    # Teacher double-dagger ensemble: each further student starts from the teacher too, not from a fresh init)
    teacher = json.loads((teacher_dir / "summary.json").read_text())
    assert all(abs(s["test_acc"] - teacher["test_acc"]) <= 2.0 for s in copy["per_student"])
    teacher_weights = load_checkpoint(teacher_dir / "final.pt")["model"]
    for name in ("final-1.pt", "final-2.pt"):
        weights = load_checkpoint(tmp_path / "copy" / name)["model"]
        assert torch.allclose(weights["conv1.weight"], teacher_weights["conv1.weight"], atol=1e-6), name


def test_several_students_share_one_stage1_and_report_their_ensemble(teacher_dir, tmp_path):
    config = tiny(method="fsp", teacher=str(teacher_dir), stage1=Schedule(iterations=3, lr=1e-4), students=2,
                  fsp_lambda=0.01)
    summary = train(config, tmp_path / "two", progress=False)
    assert [m["weights"] for m in summary["per_student"]] == ["final-1.pt", "final-2.pt"]
    assert summary["stages"]["stage1"]["iterations"] == 3
    assert summary["stages"]["task"]["iterations"] == 12
    assert "ensemble_test_acc" in summary and 0 <= summary["ensemble_test_disagreement"] <= 100
    first, second = (load_checkpoint(tmp_path / "two" / w)["model"] for w in ("final-1.pt", "final-2.pt"))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # different data orders


def test_ensembles_across_runs_read_the_stored_predictions_and_else_measure_the_weights(tmp_path, monkeypatch):
    config = tiny(split_seed=0)
    folders = [tmp_path / "a", tmp_path / "b"]
    summaries = [train(dataclasses.replace(config, seed=seed), folder, progress=False)
                 for seed, folder in zip((0, 1), folders)]
    members = [(folder, summary["per_student"][0]) for folder, summary in zip(folders, summaries)]
    for folder, student in members:
        stored = load_file(str(folder / student["predictions"]))
        assert student["predictions"] == "final-predictions.safetensors"
        for split in ("val", "test"):
            correct = stored[f"{split}_probs"].argmax(dim=1) == stored[f"{split}_labels"]
            assert 100 * correct.float().mean().item() == pytest.approx(student[f"{split}_acc"])
    where = {"data": config.data, "val_split": config.val_split, "seed": 0}
    measured = evaluate_checkpoints([f / "final.pt" for f in folders], split="test", **where)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the weights were evaluated again")

    with monkeypatch.context() as patched:
        patched.setattr(inference, "evaluate_checkpoints", no_evaluation)
        from_store = inference.ensemble_of_students(members, "test", **where)
    assert from_store["ensemble_accuracy"] == pytest.approx(measured["ensemble_accuracy"])
    assert from_store["disagreement"] == pytest.approx(measured["disagreement"])
    (folders[1] / "final-predictions.safetensors").unlink()  # a run of an earlier version: measured again
    again = inference.ensemble_of_students(members, "test", **where)
    assert again["ensemble_accuracy"] == measured["ensemble_accuracy"]


def test_disagreement_is_the_mean_share_of_images_two_members_label_differently():
    def one_hot(labels):
        return torch.nn.functional.one_hot(torch.tensor(labels), 3).float()

    members = [one_hot([0, 1, 2, 0]), one_hot([0, 1, 2, 1]), one_hot([1, 1, 2, 2])]
    # pairs (1,2): 1 of 4 images differ, (1,3): 2 of 4, (2,3): 2 of 4 -> 5 of 12
    assert disagreement(members) == pytest.approx(100 * 5 / 12)
    assert disagreement(members[:1] * 2) == 0.0


# interrupted in stage 2 after its checkpoint at 4: the only student's (step 8 + 5), or the second student's
# (8 + 6 + 5), which must go on from its own weights, not from the finished first student's
@pytest.mark.parametrize("students, at_call", [(1, 13), (2, 19)])
def test_resume_after_an_interruption_ends_with_the_same_weights(teacher_dir, tmp_path, monkeypatch, students,
                                                                 at_call):
    config = tiny(method="fsp", teacher=str(teacher_dir), stage1=Schedule(iterations=8, lr=1e-4),
                  fsp_lambda=0.01, students=students)
    straight = train(config, tmp_path / "straight", progress=False)
    train_until_interrupted(config, tmp_path / "resumed", monkeypatch, at_call=at_call)
    summary = train(config, tmp_path / "resumed", resume=True, progress=False)
    assert [s["val_acc"] for s in summary["per_student"]] == [s["val_acc"] for s in straight["per_student"]]
    for final in [f"final-{k}.pt" for k in range(1, students + 1)] if students > 1 else ["final.pt"]:
        a = load_checkpoint(tmp_path / "straight" / final)["model"]
        b = load_checkpoint(tmp_path / "resumed" / final)["model"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{final} {key}")
    rows = read_rows(tmp_path / "resumed" / "metrics.csv")
    keys = [(r.get("student"), r["stage"], r["iteration"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(read_rows(tmp_path / "straight" / "metrics.csv"))
    assert summary["stages"]["stage1"]["iterations"] == 8


def test_an_existing_run_is_refused_without_resume(teacher_dir):
    with pytest.raises(FspkdError, match="already holds a run; pass --resume"):
        train(tiny(model="resnet14"), teacher_dir, progress=False)


def test_a_non_finite_loss_stops_with_iteration_stage_and_term(teacher_dir, tmp_path):
    # the live teacher (a stored one, which auto would choose for this long stage 1, diverges in the gradients first)
    config = tiny(method="fsp", teacher=str(teacher_dir), stage1=Schedule(iterations=50, lr=10.0), eval_every=2,
                  stored_fsp=False)
    with pytest.raises(NonFiniteLoss, match=r"iteration \d+ of stage1 \(term fsp_loss"):
        train(config, tmp_path / "boom", progress=False)
    kept = load_checkpoint(tmp_path / "boom" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_mismatched_fsp_widths_list_both_widths_per_pair(teacher_dir, tmp_path):
    config = tiny(method="fsp", model="resnet8", model_options={"width": 2}, teacher=str(teacher_dir),
                  stage1=Schedule(iterations=2, lr=1e-4), fsp_connector="none")
    with pytest.raises(FspkdError, match=r"pair 1 .*student \(32, 32\), teacher \(16, 16\)"):
        train(config, tmp_path / "bad", progress=False)


def test_grad_norm_is_logged_before_clipping_and_clipping_bounds_the_step(tmp_path):
    """One SGD step (no momentum, no weight decay) with and without clipping: the weights differ by
    lr * (||g|| - clip), ||g|| being the logged pre-clipping norm."""
    def one_step(clip):
        schedule = Schedule(iterations=1, lr=0.1, milestones=[], momentum=0.0, weight_decay=0.0, clip_grad=clip)
        out = tmp_path / f"clip{clip}"
        train(tiny(task=schedule, eval_every=1), out, progress=False)
        row = read_rows(out / "metrics.csv")[-1]
        return load_checkpoint(out / "final.pt")["model"], float(row["grad_norm"])

    free, norm = one_step(0.0)
    clipped, norm_clipped = one_step(1e-3)
    assert norm == pytest.approx(norm_clipped, rel=1e-5) and norm > 1e-3
    gap = sum(float((free[k].float() - clipped[k].float()).pow(2).sum()) for k in free) ** 0.5
    assert gap == pytest.approx(0.1 * (norm - 1e-3), rel=1e-3)


def test_warmup_ramps_the_learning_rate_linearly():
    schedule = Schedule(iterations=100, lr=0.1, milestones=[50], warmup=4)
    assert [schedule.lr_at(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert schedule.lr_at(60) == pytest.approx(0.01)


def test_split_seed_fixes_the_validation_split_while_seed_varies(tmp_path, monkeypatch):
    drawn = []
    original = build.load_dataset

    def record(*args, **kwargs):
        drawn.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(build, "load_dataset", record)
    train(tiny(seed=3, split_seed=0, task=Schedule(iterations=1, milestones=[])), tmp_path / "a", progress=False)
    train(tiny(seed=3, task=Schedule(iterations=1, milestones=[])), tmp_path / "b", progress=False)
    assert drawn == [0, 3]


@pytest.fixture
def evaluated(monkeypatch):
    """The number of images of every held-out evaluation the run makes, in order."""
    from fspkd.training import records

    sizes, original = [], records.predict

    def record(model, images, *args, **kwargs):
        sizes.append(len(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(records, "predict", record)
    return sizes


def test_cadence_evaluations_take_eval_images_and_the_final_one_the_whole_splits(tmp_path, evaluated):
    from fspkd.training.inference import evaluate_checkpoints

    summary = train(tiny(eval_images=20), tmp_path / "run", progress=False)
    # a cadence evaluation at 4 over 20 images of val (30) and test (100); the stage's last step (6) over all of
    # them, so the curve ends on the result, and the student's final evaluation reuses it (same weights)
    assert evaluated == [20, 20, 30, 100]
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert [(r["iteration"], r["eval_images"]) for r in rows if r["val_acc"]] == [("4", "20"), ("6", "100")]
    assert float([r for r in rows if r["val_acc"]][-1]["val_acc"]) == pytest.approx(summary["val_acc"])
    assert all(not r["eval_images"] for r in rows if not r["val_acc"])
    for split in ("val", "test"):
        whole = evaluate_checkpoints([tmp_path / "run" / "final.pt"], data="synthetic:320,100", split=split,
                                     val_split=0.1, seed=0)
        assert summary[f"{split}_acc"] == whole["networks"][0]["accuracy"]
    assert summary["eval_wall_s"] == summary["stages"]["task"]["eval_s"] > 0
    assert summary["total_wall_s"] == summary["stages"]["task"]["wall_s"]  # optimiser steps only


def test_eval_images_0_evaluates_the_whole_splits_every_time(tmp_path, evaluated):
    train(tiny(eval_images=0, task=Schedule(iterations=4, lr=0.05)), tmp_path / "run", progress=False)
    assert evaluated == [30, 100]  # the last step's evaluation is the student's final one
    assert [r["eval_images"] for r in read_rows(tmp_path / "run" / "metrics.csv") if r["val_acc"]] == ["100"]


def test_the_cadence_subset_is_a_seeded_draw_with_every_class_of_a_class_sorted_split():
    from types import SimpleNamespace

    from fspkd.data import ImageSet
    from fspkd.training.records import Records

    # an image tree's split keeps its order, class by class: its first 50 images would be one class
    labels = torch.arange(10).repeat_interleave(100)
    split = ImageSet(torch.arange(1000).view(1000, 1, 1, 1).expand(1000, 3, 1, 1).to(torch.uint8), labels)
    records = SimpleNamespace(run=SimpleNamespace(splits=SimpleNamespace(val=split)), cadence_subsets={})
    subset = Records._held_out(records, "val", 50)
    assert len(subset) == 50 and torch.bincount(subset.labels, minlength=10).max() <= 10
    another_run = SimpleNamespace(run=records.run, cadence_subsets={})
    assert torch.equal(subset.labels, Records._held_out(another_run, "val", 50).labels)  # the same in every run
    assert Records._held_out(records, "val", 0) is split
