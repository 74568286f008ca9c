"""``fspkd reproduce transfer``: the teacher's architecture picks the table's networks, the KD row, --image-size
and --seeds (one table per seed, rows as mean ± std), on a tiny image folder with train/ and val/.

The MobileNetV2 teacher is a random-init stand-in saved as the shared ImageNet file is (``features.*`` only), so
the test needs no file from ../shared; the numbers are meaningless, the tests check where they come from.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
import yaml
from datafakes import write_image_folder

from fspkd.cli import main
from fspkd.core.errors import FspkdError
from fspkd.experiments.paper_tables import load_table, parse_table
from fspkd.experiments.seeds import parse_seeds
from fspkd.models import create

TINY = ["--scale", "0.0002", "--set", "batch_size=16", "--set", "eval_batch_size=50", "--quiet"]
STUDENT_BLOCKS = [1, 1, 2, 2, 1, 2, 1]
ROWS = ["Teacher fine-tuned", "Teacher from scratch", "Student from scratch", "FitNet", "FSP", "KD"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("teacher, student, options", [("resnet34", "resnet20_4stage", {}),
                                                      ("mobilenetv2", "mobilenetv2", {"blocks": STUDENT_BLOCKS})])
def test_the_teacher_architecture_picks_the_six_rows_networks(teacher, student, options):
    table = load_table("transfer", teacher)
    assert [r.label.partition(" (")[0] for r in table.rows] == ROWS
    runs = table.runs
    for name in ("teacher_ft", "teacher_scratch"):
        assert (runs[name].model, runs[name].model_options) == (teacher, {})
    for name in ("student_scratch", "fitnet", "fsp", "kd"):
        assert (runs[name].model, runs[name].model_options) == (student, options)
    assert (runs["teacher_ft"].teacher, runs["teacher_ft"].teacher_model) == ("@teacher", teacher)
    assert (runs["fsp"].teacher, runs["fsp"].teacher_model) == ("@teacher", teacher)
    assert runs["kd"].method == "kd" and runs["kd"].teacher == runs["fitnet"].teacher == "teacher_ft"
    assert table.rows[-1].paper == {"acc": None}  # the paper has no KD row
    assert all(c.image_size == 224 for c in runs.values())


def test_resnet34_is_the_default_teacher():
    assert load_table("transfer").runs["teacher_scratch"].model == "resnet34"


def test_a_bad_teacher_model_is_one_line(tmp_path, capsys):
    args = ["reproduce", "transfer", "--data", "synthetic:64,32", "--teacher", str(tmp_path / "t.pt"),
            "--teacher-model", "resnet18", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--teacher-model 'resnet18'" in lines[0]
    assert "resnet34, mobilenetv2" in lines[0] and "teacher_models" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_run_naming_a_network_needs_the_mapping():
    data = {"experiment": "x", "title": "x", "layout": "single", "paper_data": "x", "base": {},
            "runs": {"a": {"method": "plain", "net": "student"}}, "rows": [{"label": "a", "runs": ["a"],
                                                                          "paper": {"acc": 1.0}}]}
    with pytest.raises(FspkdError, match="run a: 'net: student' needs a teacher_models table"):
        parse_table(data, where="x.yaml")


@pytest.mark.parametrize("text", ["", "0,x", "1,1", "-1"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(FspkdError, match="--seeds expects distinct integers"):
        parse_seeds(text)


@pytest.fixture(scope="module")
def mobilenet_seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    torch.manual_seed(1)
    teacher = root / "imagenet-features.pt"
    state = create("mobilenetv2", num_classes=1000).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, teacher)
    write_image_folder(root / "hymenoptera", ["ants", "bees"], per_class=12)
    write_image_folder(root / "hymenoptera", ["ants", "bees"], per_class=4, split="val", seed=1)
    out = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FSPKD_CACHE", str(root / "cache"))
        assert main(["reproduce", "transfer", "--data", f"imagefolder:{root / 'hymenoptera'}", "--teacher",
                     str(teacher), "--teacher-model", "mobilenetv2", "--image-size", "32", "--seeds", "0,1",
                     "--out", str(out), *TINY]) == 0
    return json.loads((out / "results.json").read_text()), out, teacher


def test_seeds_run_the_table_once_each_and_report_mean_and_std(mobilenet_seeds):
    results, out, _ = mobilenet_seeds
    per_seed = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert results["seeds"] == [0, 1] and results["split"] == "test"  # val/ is read as the held-out split
    assert [r["label"] for r in results["rows"]] == [r["label"] for r in per_seed[0]["rows"]]
    for index, row in enumerate(results["rows"]):
        values = [seed["rows"][index]["avg"] for seed in per_seed]
        assert row["per_seed"] == values
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))
        assert row["hours_per_seed"] == [seed["rows"][index]["hours"] for seed in per_seed]
    report = (out / "report.md").read_text()
    assert "mean ± std over 2 seeds" in report and "`--image-size 32`" in report
    assert "| 77.72 |" in report and "KD (MobileNetV2, 10 blocks)" in report
    kd_line = next(line for line in report.splitlines() if line.startswith("| KD ("))
    assert kd_line.endswith("| - |")  # no paper figure for KD
    assert "--seeds 0,1" in report and (out / "seed-1" / "report.md").is_file()


def test_every_run_gets_the_image_size_and_its_seed(mobilenet_seeds):
    _, out, teacher = mobilenet_seeds
    for seed in (0, 1):
        for run in ("teacher_ft", "teacher_scratch", "student_scratch", "fitnet", "fsp", "kd"):
            config = yaml.safe_load((out / f"seed-{seed}" / run / "config.yaml").read_text())
            assert (config["image_size"], config["seed"], config["split_seed"]) == (32, seed, 0), run
        fsp = yaml.safe_load((out / f"seed-{seed}" / "fsp" / "config.yaml").read_text())
        assert (fsp["teacher"], fsp["teacher_model"]) == (str(teacher), "mobilenetv2")


def test_parameter_counts_and_the_fine_tuning_start(mobilenet_seeds):
    results, out, teacher = mobilenet_seeds
    rows = {r["label"].partition(" (")[0]: r for r in results["rows"]}
    count = lambda **options: sum(p.numel() for p in create("mobilenetv2", num_classes=2, **options).parameters())
    assert rows["Teacher fine-tuned"]["params"] == count() and rows["Teacher fine-tuned"]["params_vs_teacher"] == 1
    assert rows["FSP"]["params"] == count(blocks=STUDENT_BLOCKS) < count()
    start = torch.load(out / "seed-0" / "prepared" / "teacher_ft-start.pt", weights_only=True)["model"]
    original = torch.load(teacher, weights_only=True)
    assert torch.equal(start["features.18.0.weight"], original["features.18.0.weight"])
    assert start["classifier.1.weight"].shape == (2, 1280)
