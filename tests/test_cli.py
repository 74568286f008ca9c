"""The ``fspkd`` command end to end on tiny runs: train, distill (every method), eval, demo."""

import json

import pytest

from fspkd.cli import build_parser, config_from_args, main
from fspkd.core.config import load_yaml
from fspkd.core.settings import DEFAULT_FSP_RECIPE, FSP_RECIPES
from fspkd.training.runlog import read_metrics

TINY = ["--data", "synthetic:320,100", "--batch-size", "32", "--eval-every", "4", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["train", *TINY, "--model", "resnet14", "--iterations", "8", "--out", str(out)]) == 0
    return out


def test_train_writes_a_run_folder(teacher):
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["method"] == "plain" and summary["stages"]["task"]["iterations"] == 8
    assert {"config.yaml", "metrics.csv", "final.pt", "summary.json"} <= {p.name for p in teacher.iterdir()}


@pytest.mark.parametrize("method", ["fsp", "kd", "fitnet"])
def test_distill_each_method(method, teacher, tmp_path):
    out = tmp_path / method
    args = ["distill", *TINY, "--method", method, "--teacher", str(teacher), "--model", "resnet8",
            "--iterations", "4", "--out", str(out)]
    assert main(args + ([] if method == "kd" else ["--stage1-iterations", "4"])) == 0
    stages = {row["stage"] for row in read_metrics(out / "metrics.csv")}
    assert stages == ({"task"} if method == "kd" else {"stage1", "task"})


def test_shuffled_fsp_students_and_their_ensemble_eval(teacher, tmp_path, capsys):
    out = tmp_path / "shuffled"
    args = ["distill", *TINY, "--method", "fsp", "--teacher", str(teacher), "--model", "resnet8",
            "--iterations", "4", "--stage1-iterations", "2", "--students", "2", "--shuffle-seed", "5",
            "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    weights = [str(out / "final-1.pt"), str(out / "final-2.pt"), str(teacher)]
    assert main(["eval", "--data", "synthetic:320,100", "--weights", *weights, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results["networks"]) == 3 and 0 <= results["ensemble_accuracy"] <= 100
    assert 0 <= results["disagreement"] <= 100
    assert results["images"] == 100


def test_milestones_default_to_half_and_three_quarters():
    args = build_parser().parse_args(["distill", "--out", "x", "--iterations", "400", "--stage1-iterations", "100"])
    config = config_from_args(args)
    assert config.method == "fsp"
    assert config.task.milestones == [200, 300] and config.stage1.milestones == [50, 75]
    assert config.stage1.lr == 0.001  # the paper's stage-1 lr


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: resnet14\nseed: 3\ntask: {iterations: 10, lr: 0.05}\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--seed", "4", "--out", "x"])
    config = config_from_args(args)
    assert (config.model, config.seed, config.task.iterations, config.task.lr) == ("resnet14", 4, 10, 0.05)


def test_demo_on_the_shipped_data_writes_table_report_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--scale", "0.02", "--cpus", "1"]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    names = [run["run"] for run in results["runs"]]
    assert names == ["scratch", "fsp", "kd", "fitnet", "scratch-3x"]
    assert load_yaml(out / "fsp" / "config.yaml")["fsp_normalize"] == FSP_RECIPES[DEFAULT_FSP_RECIPE]["fsp_normalize"]
    for run in results["runs"]:
        assert f"| {run['run']} |" in report and f"| {run['run']} |" in printed
        summary = json.loads((out / run["run"] / "summary.json").read_text())
        assert (run["method"], run["test_acc"], run["task_lr"]) == (summary["method"], summary["test_acc"],
                                                                    summary["task_lr"])
    assert 0 < results["teacher_test_acc"] <= 100 and f"{results['teacher_test_acc']:.2f}%" in report
    assert "FSP " in report and "scratch-3x" in report and results["demo_wall_s"] > 0
    assert (out / "curves.png").stat().st_size > 10_000 and "curves.png" in report


def test_resume_needs_only_the_output_folder_and_refuses_changed_settings(teacher, capsys):
    before = (teacher / "summary.json").read_text()
    assert main(["train", "--out", str(teacher), "--resume", "--quiet"]) == 0
    assert main(["train", "--out", str(teacher), "--resume", "--seed", "9", "--quiet"]) == 2
    assert "differ from those of the run" in capsys.readouterr().err
    assert main(["train", *TINY, "--model", "resnet14", "--iterations", "8", "--out", str(teacher)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (teacher / "summary.json").read_text() == before


def test_stage1_defaults_keep_the_papers_proportions_to_the_task_stage():
    fsp = config_from_args(build_parser().parse_args(["distill", "--out", "x", "--iterations", "2100"]))
    assert (fsp.stage1.iterations, fsp.stage1.milestones) == (2100, [1100, 1600])  # 21k, 11k, 16k of the paper
    fitnet = config_from_args(build_parser().parse_args(["distill", "--out", "x", "--method", "fitnet",
                                                         "--iterations", "2100"]))
    assert (fitnet.stage1.iterations, fitnet.stage1.milestones, fitnet.stage1.lr) == (3500, [2500], 1e-4)
    plain = config_from_args(build_parser().parse_args(["train", "--out", "x"]))
    assert (plain.task.iterations, plain.task.milestones) == (1000, [500, 750])


def test_models_lists_sizes_and_fsp_tap_widths(capsys):
    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert {"resnet20", "resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2_cifar", "shufflenetv2"} <= set(rows)
    assert rows["resnet20"].split()[1] == "269,722"  # 10 classes
    # start>end channels per section, with the first map before | after the section's first block
    assert rows["wrn_40_2"].endswith("16>32 32>64 64>128 | 32>32 64>64 128>128")
    assert rows["resnet8x4"].endswith("32>64 64>128 128>256 | 64>64 128>128 256>256")
    assert rows["vgg8"].split("|")[1] == rows["vgg13"].split("|")[1]  # a pair FSP matches as it is
