"""The fast-optimization study's options and driver: normalised FSP, recipes, arm overrides, a tiny study."""

import dataclasses
import json

import pytest
import torch

from fspkd.cli import DEFAULT_FSP_RECIPE, build_parser, config_from_args
from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.core.fsp import fsp_loss, fsp_matrix
from fspkd.core.settings import FSP_RECIPES, apply_recipe
from fspkd.experiments.study import arm_config, arm_label, is_reference_scratch, run_study, student_curves, summarize
from fspkd.methods.fsp import unit_matrices
from fspkd.training.run import train


def test_unit_matrices_have_unit_norm_and_make_the_loss_blind_to_feature_scale():
    torch.manual_seed(0)
    a, b, c = torch.randn(3, 4, 6, 6), torch.randn(3, 5, 6, 6), torch.randn(3, 5, 6, 6)
    g = unit_matrices([fsp_matrix(a, b)])[0]
    torch.testing.assert_close(g.flatten(1).norm(dim=1), torch.ones(3))
    teacher = unit_matrices([fsp_matrix(a, c)])
    loss = fsp_loss(unit_matrices([fsp_matrix(a, b)]), teacher)
    scaled = fsp_loss(unit_matrices([fsp_matrix(3 * a, 5 * b)]), teacher)
    torch.testing.assert_close(loss, scaled)
    assert not torch.allclose(fsp_loss([fsp_matrix(a, b)], [fsp_matrix(a, c)]),
                              fsp_loss([fsp_matrix(3 * a, 5 * b)], [fsp_matrix(a, c)]))


def test_fsp_normalize_is_validated():
    with pytest.raises(FspkdError, match="fsp_normalize"):
        RunConfig(fsp_normalize="l2").validate()


def distill_config(*flags, config_file=None):
    argv = ["distill", "--out", "x", "--teacher", "t.pt", *flags]
    return config_from_args(build_parser().parse_args(argv + (["--config", str(config_file)] if config_file else [])))


def test_paper_recipe_is_algorithm_1_and_one_flag_away_from_any_default():
    paper = distill_config("--fsp-recipe", "paper", "--iterations", "400", "--stage1-iterations", "400")
    assert paper.stage1 == Schedule(iterations=400, lr=1e-3, milestones=[200, 300])
    assert paper.task == Schedule(iterations=400, lr=0.1, milestones=[200, 300])
    assert (paper.fsp_lambda, paper.fsp_normalize, paper.fsp_first) == (0.01, "none", "before")
    assert distill_config() == distill_config("--fsp-recipe", DEFAULT_FSP_RECIPE)
    with pytest.raises(FspkdError, match="unknown FSP recipe 'fastest'"):
        apply_recipe(RunConfig(), "fastest")


@pytest.mark.parametrize("recipe", sorted(FSP_RECIPES))
def test_flags_and_config_files_override_a_recipe(recipe, tmp_path):
    other_first = "before" if FSP_RECIPES[recipe]["fsp_first"] == "after" else "after"
    config = distill_config("--fsp-recipe", recipe, "--stage1-lr", "0.5", "--fsp-first", other_first)
    assert (config.stage1.lr, config.fsp_first) == (0.5, other_first)
    assert config.stage1.optimizer == FSP_RECIPES[recipe]["stage1.optimizer"]
    (tmp_path / "run.yaml").write_text(f"fsp_recipe: {recipe}\nfsp_normalize: frobenius\ntask: {{lr: 0.03}}\n")
    config = distill_config(config_file=tmp_path / "run.yaml")
    assert (config.fsp_normalize, config.task.lr) == ("frobenius", 0.03)
    assert config.fsp_lambda == FSP_RECIPES[recipe]["fsp_lambda"]


def test_arm_overrides_reach_the_schedules_and_bad_ones_are_named():
    config = arm_config("fsp-paper:stage1.optimizer=adam,task.lr=0.02,fsp_first=after", 100, {})
    assert (config.stage1.optimizer, config.task.lr, config.fsp_first) == ("adam", 0.02, "after")
    assert config.task.milestones == [50, 75]
    assert arm_config("scratch", 100, {"teacher": "t.pt"}).teacher is None
    reseeded = arm_config("fsp-best:seed=2", 100, {"seed": 5})  # its own stage 1, the study's split
    assert (reseeded.seed, reseeded.held_out_seed, arm_config("kd", 100, {"seed": 5}).split_seed) == (2, 5, None)
    assert arm_label("scratch:init=runs/b500/fsp-best/checkpoints/stage1.pt,task.lr=0.02") == \
        "fsp-best stage 1 + task.lr=0.02"
    assert arm_label("fsp-best:eval_every=100,task.lr=0.005") == "fsp-best:task.lr=0.005"
    assert [is_reference_scratch(a) for a in ("scratch", "scratch:eval_every=100", "scratch:task.lr=0.02",
                                              "scratch:init=x.pt", "kd")] == [True, True, False, False, False]
    for arm, words in (("fsp-paper:stage1.speed=2", "stage1.speed"), ("scratch:stage1.lr=1", "stage1.lr"),
                       ("fsp-paper:colour=red", "colour"), ("fsp-paper:lr", "KEY=VALUE"), ("dream", "dream")):
        with pytest.raises(FspkdError, match=words):
            arm_config(arm, 100, {})


def test_a_tiny_study_trains_every_arm_and_reports_each_student(tmp_path):
    base = {"data": "synthetic:320,100", "model": "resnet8", "batch_size": 32, "val_split": 0.1}
    teacher = tmp_path / "teacher"
    train({**base, "task": {"iterations": 6, "lr": 0.05}}, teacher, progress=False)
    base = {**base, "teacher": str(teacher), "students": 2}
    report = run_study(tmp_path / "study", ["scratch", "fsp-paper", "kd"], [2, 4], base, progress=False)
    assert "| fsp-paper | 2 |" in report and "| scratch | 2 |" in report and "| kd | 2 |" in report
    assert (tmp_path / "study" / "figures" / "study-b4.png").stat().st_size > 0
    curves = student_curves(tmp_path / "study" / "b4" / "fsp-paper")
    assert len(curves) == 2 and curves[0]["stage1_wall_s"] > 0
    for curve in curves:
        assert curve["iteration"] == [1, 2, 3, 4]
        assert curve["stage1_wall_s"] < curve["wall_s"][0] < curve["wall_s"][-1]
    # each student's clock = the shared stage 1 + its own task stage: together they make up the run's total
    total = json.loads((tmp_path / "study" / "b4" / "fsp-paper" / "summary.json").read_text())["total_wall_s"]
    own = sum(c["wall_s"][-1] - c["stage1_wall_s"] for c in curves)
    assert own + curves[0]["stage1_wall_s"] == pytest.approx(total, rel=1e-3)
    assert "| fsp-paper | after stage 1 |" in report  # where stage 1 ended, pair by pair
    # the shorter schedules against scratch's longer one: fsp-paper and kd at 2, nothing against scratch at 2
    shorter = [line for line in report.split("### Shorter schedules")[1].splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in shorter[1:]]  # the header row left out
    assert [(c[0], c[1], c[4]) for c in cells] == [("fsp-paper", "2", "4"), ("kd", "2", "4")]
    summary = summarize(tmp_path / "study" / "b4" / "scratch", target=0.0)
    assert summary["reached"] == [1, 1] and summary["stage1_wall_s"] == 0.0


def test_init_starts_a_run_from_a_stage1_checkpoint(tmp_path):
    base = RunConfig(data="synthetic:320,100", model="resnet8", batch_size=32, val_split=0.1, eval_every=3,
                     task=Schedule(iterations=3, lr=0.05))
    train(dataclasses.replace(base, model="resnet14"), tmp_path / "teacher", progress=False)
    fsp = dataclasses.replace(base, method="fsp", teacher=str(tmp_path / "teacher"),
                              stage1=Schedule(iterations=3, lr=1e-3))
    train(fsp, tmp_path / "fsp", progress=False)
    stage1 = load_checkpoint(tmp_path / "fsp" / "checkpoints" / "stage1.pt")["model"]
    still = Schedule(iterations=2, lr=1e-12, weight_decay=0.0)  # steps too small to move the weights
    for run, init in (("from-stage1", tmp_path / "fsp" / "checkpoints" / "stage1.pt"), ("fresh", None)):
        config = dataclasses.replace(base, task=still, students=2, init=str(init) if init else None)
        train(config, tmp_path / run, progress=False)
        for final in ("final-1.pt", "final-2.pt"):
            weights = load_checkpoint(tmp_path / run / final)["model"]
            assert torch.allclose(weights["conv1.weight"], stage1["conv1.weight"], atol=1e-9) == (init is not None)
    # a run started from a stage-1 checkpoint is charged that stage 1's time
    charged = [c["stage1_wall_s"] for c in student_curves(tmp_path / "from-stage1")]
    assert charged == [student_curves(tmp_path / "fsp")[0]["stage1_wall_s"]] * 2 and charged[0] > 0
    assert [c["stage1_wall_s"] for c in student_curves(tmp_path / "fresh")] == [0.0, 0.0]
