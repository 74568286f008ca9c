"""Every configuration value is checked for its type and range before anything is written (issue 31, point 7),
and a device this machine lacks is named with the ones it has (point 8): one ``fspkd: error:`` line naming the
key (and the file it came from), the value and what is allowed; no run folder is left behind."""

import math
import re
from pathlib import Path

import pytest

import fspkd
from fspkd.cli import main
from fspkd.core.config import RUN_RANGES, SCHEDULE_RANGES, RunConfig, Schedule
from fspkd.core.errors import FspkdError

TINY = ["--data", "synthetic:64,32", "--batch-size", "8", "--iterations", "2", "--eval-every", "2", "--quiet"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))


def fails_in_one_line(capsys, argv: list[str], pattern: str) -> str:
    out = Path(argv[argv.index("--out") + 1])
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("fspkd: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists(), f"{out} was created"
    return lines[0]


@pytest.mark.parametrize("yaml_text, pattern", [
    ('batch_size: "8"', r"run\.yaml: batch_size must be an integer, got '8' \(str\)"),
    ("seed: abc", r"run\.yaml: seed must be an integer, got 'abc'"),
    ("eval_every: 2.5", r"run\.yaml: eval_every must be an integer, got 2\.5"),
    ("val_split: x", r"run\.yaml: val_split must be a number, got 'x'"),
    ("task: {lr: 1e-3}", r"run\.yaml, task: lr must be a number, got '1e-3' \(str\); YAML reads 1e-3 as text: "
                         r"write 1\.0e-3"),
    ("kd_alpha: '0.5'", r"run\.yaml: kd_alpha must be a number, got '0\.5' \(str\); write 0\.5 without quotes"),
    ("model_options: 3", r"run\.yaml: model_options must be a mapping of option names to values.*got 3 \(int\)"),
    ("task: 5", r"run\.yaml: task must be a mapping of schedule settings, got 5"),
    ("train: 5", r"unknown key 'train' in .*run\.yaml"),
    ('augment: "no"', r"run\.yaml: augment must be true, false or null.*got 'no'"),
    ("flip: 1", r"run\.yaml: flip must be true or false, got 1 \(int\)"),
    ('fsp_pairs: "layer1>layer2"', r"run\.yaml: fsp_pairs must be a list of \[first tap, second tap\] pairs"),
    ("fsp_pairs: [[layer1]]", r"fsp_pairs must be a non-empty list of \[first tap, second tap\] pairs"),
    ("task: {iterations: '5'}", r"run\.yaml, task: iterations must be an integer, got '5'"),
    ("task: {milestones: 5}", r"run\.yaml, task: milestones must be a list of integers, got 5"),
    ("method: [fsp]", r"run\.yaml: method must be a string, got \['fsp'\]"),
    ("eval_images: all", r"run\.yaml: eval_images must be an integer, got 'all' \(str\)"),
])
def test_yaml_values_of_the_wrong_type_are_named_with_their_file(capsys, tmp_path, yaml_text, pattern):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text + "\n")
    fails_in_one_line(capsys, ["distill", "--config", str(config), "--teacher", str(tmp_path / "t.pt"),
                               "--out", str(tmp_path / "o"), "--quiet"], pattern)


@pytest.mark.parametrize("flags, pattern", [
    (["--kd-alpha", "5"], r"kd_alpha must be in \[0, 1\].*got 5\.0"),
    (["--kd-temperature", "-4"], r"kd_temperature must be a finite number > 0, got -4\.0"),
    (["--kd-temperature", "0"], r"kd_temperature must be a finite number > 0, got 0\.0"),
    (["--fsp-lambda", "-1"], r"fsp_lambda must be a finite number > 0, got -1\.0"),
    (["--lr", "inf"], r"task\.lr must be a finite number > 0, got inf"),
    (["--stage1-lr", "nan"], r"stage1\.lr must be a finite number > 0, got nan"),
    (["--weight-decay", "nan"], r"task\.weight_decay must be a finite number >= 0, got nan"),
    (["--clip-grad", "nan"], r"task\.clip_grad must be a finite number >= 0 \(0 = no clipping\), got nan"),
    (["--seed", "-1"], r"seed must be an integer in \[0, 2\*\*63\), got -1"),
    (["--image-size", "0"], r"image_size must be a positive integer, got 0"),
    (["--eval-images", "-1"], r"eval_images must be an integer >= 0 \(0 = the whole split\), got -1"),
    (["--task-lr-candidates", "0.1,inf"], r"task_lr_candidates must be finite learning rates > 0, got inf"),
])
def test_meaningless_numbers_are_refused_before_anything_is_written(capsys, tmp_path, flags, pattern):
    fails_in_one_line(capsys, ["distill", "--teacher", str(tmp_path / "t.pt"), "--out", str(tmp_path / "o"),
                               *TINY, *flags], pattern)


def test_a_batch_larger_than_the_data_writes_nothing(capsys, tmp_path):
    fails_in_one_line(capsys, ["train", "--out", str(tmp_path / "o"), *TINY, "--batch-size", "100000"],
                      r"batch_size 100000: larger than the 64 training images")


def test_a_batch_larger_than_the_data_releases_a_folder_that_existed(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    assert main(["train", "--out", str(tmp_path / "o"), *TINY, "--batch-size", "100000"]) == 2
    assert "larger than the 64 training images" in capsys.readouterr().err
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("device, pattern", [
    ("foo", r"--device 'foo' is not a device name; available here: cpu"),
    ("cuda", r"--device cuda: (CUDA is not available on this machine .*; available here: cpu|)"),
    ("cuda:7", r"--device cuda:7: (CUDA is not available|this machine has \d CUDA device)"),
])
def test_a_device_this_machine_lacks_is_named_with_those_it_has(capsys, tmp_path, device, pattern):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails_in_one_line(capsys, ["train", "--out", str(tmp_path / "o"), *TINY, "--device", device], pattern)


def test_every_field_has_a_type_check_and_the_defaults_pass_it():
    RunConfig().validate()  # an unchecked field type raises TypeError here
    for method in ("plain", "fsp", "kd", "fitnet"):
        fspkd.resolve_config({"method": method})


@pytest.mark.parametrize("named, words", [
    ({"batch_size": True}, r"batch_size must be an integer, got True \(bool\)"),
    ({"kd_alpha": "0.5"}, r"kd_alpha must be a number, got '0.5'"),
    ({"fitnet_kd_weight": [4.0]}, r"fitnet_kd_weight must be two weights"),
    ({"fitnet_kd_weight": [4.0, -1.0]}, r"fitnet_kd_weight must be finite weights >= 0"),
    ({"task": {"momentum": 1.5}}, r"task\.momentum must be in \[0, 1\), got 1\.5"),
    ({"task": {"gamma": 0}}, r"task\.gamma must be a finite number > 0, got 0"),
    ({"task": {"warmup": -1}}, r"task\.warmup must be an integer >= 0, got -1"),
    ({"teacher_options": {"width": 4}, "teacher": 7}, r"teacher must be a string or null, got 7"),
    ({"fsp_recipe": ["fast"], "method": "fsp"}, r"fsp_recipe must be a recipe name"),
])
def test_the_python_api_checks_the_same(named, words):
    with pytest.raises(FspkdError, match=words):
        fspkd.resolve_config(named)


def test_a_dataclass_built_by_hand_is_checked_too():
    with pytest.raises(FspkdError, match=r"task\.lr must be a finite number > 0, got nan"):
        RunConfig(task=Schedule(lr=math.nan)).validate()
    with pytest.raises(FspkdError, match=r"configuration: task\.iterations must be an integer, got '9'"):
        RunConfig(task=Schedule(iterations="9")).validate()


def test_every_range_names_a_field():
    assert set(RUN_RANGES) <= set(RunConfig.__dataclass_fields__)
    assert set(SCHEDULE_RANGES) <= set(Schedule.__dataclass_fields__)


def test_bench_names_a_device_this_machine_lacks(capsys):
    assert main(["bench", "--device", "foo", "--repeats", "1"]) == 2
    assert capsys.readouterr().err.strip() == "fspkd: error: --device 'foo' is not a device name; available here: cpu"
