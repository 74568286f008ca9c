"""Settings resolved once (``fspkd.resolve_config``): the CLI and the Python API agree, two-stage methods get the
paper's stage 1 or a clear error, and nothing is written before the settings and the dry run pass."""

import pytest

import fspkd
from fspkd.cli import main
from fspkd.core.config import METHODS, RunConfig, Schedule
from fspkd.core.errors import FspkdError
from fspkd.core.settings import FSP_RECIPES
from fspkd.methods import METHODS as IMPLEMENTED
from fspkd.training.run import CLAIM

DATA = {"data": "synthetic:320,100", "batch_size": 32, "eval_every": 4}
FLAGS = ["--data", "synthetic:320,100", "--batch-size", "32", "--eval-every", "4", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("settings") / "teacher"
    fspkd.train({**DATA, "model": "resnet14", "task": {"iterations": 4}}, out, progress=False)
    return out


@pytest.mark.parametrize("method", ["plain", "fsp", "fitnet"])
def test_a_cli_run_and_an_api_run_of_the_same_settings_save_identical_config_yaml(method, teacher, tmp_path):
    flags = ["--model", "resnet8", "--iterations", "4", "--lr", "0.05", "--out", str(tmp_path / "cli")]
    named = {**DATA, "model": "resnet8", "task": {"iterations": 4, "lr": 0.05}}
    if method == "plain":
        assert main(["train", *FLAGS, *flags]) == 0
    else:
        assert main(["distill", *FLAGS, *flags, "--method", method, "--teacher", str(teacher),
                     "--stage1-iterations", "3"]) == 0
        named.update(method=method, teacher=str(teacher), stage1={"iterations": 3})
    fspkd.train(named, tmp_path / "api", progress=False)
    cli, api = ((tmp_path / run / "config.yaml").read_text() for run in ("cli", "api"))
    assert cli == api and f"method: {method}" in cli


def test_two_stage_methods_get_the_papers_stage1_and_fsp_its_recipe():
    fitnet = fspkd.resolve_config(method="fitnet", task={"iterations": 210})
    assert fitnet.stage1 == Schedule(iterations=350, lr=1e-4, milestones=[250])  # 35k with / 10 at 25k, against 21k
    assert fitnet.task == Schedule(iterations=210, lr=0.1, milestones=[105, 158])
    fsp = fspkd.resolve_config(method="fsp", task={"iterations": 210})
    assert (fsp.stage1.iterations, fsp.stage1.milestones) == (210, [110, 160])  # 21k with / 10 at 11k and 16k
    paper = fspkd.resolve_config(method="fsp", fsp_recipe="paper", stage1={"lr": 0.002})
    assert (paper.stage1.lr, paper.stage1.optimizer, paper.task.lr) == (0.002, "sgd", 0.1)  # named settings win
    assert fspkd.resolve_config(method="fsp").fsp_normalize == FSP_RECIPES["fast"]["fsp_normalize"]


@pytest.mark.parametrize("named", [{}, {"method": "kd", "teacher": "t.pt"}, {"method": "fsp", "fsp_recipe": "paper"},
                                   {"method": "fitnet", "task": {"iterations": 50, "milestones": [10]}}])
def test_a_resolved_config_resolves_to_itself(named):
    config = fspkd.resolve_config(named)
    assert fspkd.resolve_config(config.to_dict()) == config


@pytest.mark.parametrize("named, words", [
    ({"method": "kd", "stage1": {"iterations": 5}}, "method 'kd' has one stage"),
    ({"method": "plain", "fsp_recipe": "paper"}, "applies to method 'fsp' only"),
    ({"method": "fsp", "fsp_recipe": "fastest"}, "unknown FSP recipe 'fastest'"),
    ({"task": {"learning_rate": 0.1}}, "unknown key 'learning_rate' in configuration, task"),
    ({"method": "distil"}, "unknown method 'distil'"),
])
def test_bad_settings_are_named(named, words):
    with pytest.raises(FspkdError, match=words):
        fspkd.resolve_config(named)


def test_the_method_names_in_the_config_are_the_implemented_ones():
    assert set(METHODS) == set(IMPLEMENTED)


def test_a_two_stage_config_without_stage1_fails_before_anything_is_written(tmp_path):
    with pytest.raises(FspkdError, match="method 'fsp' has two stages but stage1 is not set.*resolve_config"):
        fspkd.train(RunConfig(method="fsp", teacher="t.pt", **DATA), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_failing_dry_run_releases_the_claim_and_leaves_nothing(teacher, tmp_path):
    wide = {**DATA, "method": "fsp", "model": "resnet8", "model_options": {"width": 2}, "teacher": str(teacher),
            "fsp_connector": "none"}
    with pytest.raises(FspkdError, match="equal channel widths"):
        fspkd.train(wide, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty
    with pytest.raises(FspkdError, match="equal channel widths"):
        fspkd.train(wide, tmp_path / "mine", progress=False)
    assert list((tmp_path / "mine").iterdir()) == []


def test_a_folder_being_set_up_by_another_run_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / CLAIM).touch()
    with pytest.raises(FspkdError, match="being set up by another fspkd run"):
        fspkd.train({**DATA, "task": {"iterations": 1}}, tmp_path / "busy", progress=False)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == [CLAIM]


def test_the_fast_recipe_probes_the_task_lr_unless_a_task_lr_is_named():
    assert fspkd.resolve_config(method="fsp").task_lr_candidates == [0.005, 0.02, 0.1]
    assert fspkd.resolve_config(method="fsp", task={"lr": 0.01}).task_lr_candidates == []
    assert fspkd.resolve_config(method="fsp", fsp_recipe="paper").task_lr_candidates == []
    named = fspkd.resolve_config(method="fsp", task_lr_candidates=[0.01, 0.03])
    assert fspkd.resolve_config(named.to_dict()) == named
    with pytest.raises(FspkdError, match="method 'kd' has no stage 1 to probe from"):
        fspkd.resolve_config(method="kd", teacher="t.pt", task_lr_candidates=[0.01])
    with pytest.raises(FspkdError, match="learning rates > 0, got -0.1"):
        fspkd.resolve_config(method="fsp", task_lr_candidates=[0.01, -0.1])
