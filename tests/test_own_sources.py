"""The command line on a user's own code: models as 'package.module:factory', data as 'python:module:attribute',
and FSP sections found by a dry run for networks that declare none."""

import csv
import json
import textwrap

import pytest

from fspkd.cli import main
from fspkd.core.errors import FspkdError
from fspkd.data import load_dataset
from fspkd.models import create

USER_CODE = '''
import torch
from torch import nn


class Pictures(torch.utils.data.Dataset):
    """(float CHW image in [0, 1], label) pairs, as a torchvision transform would give."""

    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (count,), generator=generator)
        self.images = torch.rand(count, 3, 16, 16, generator=generator) * 0.5
        for i, label in enumerate(self.labels):
            self.images[i, int(label)] += 0.5  # the class is the brightest channel

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def splits():
    return {"train": Pictures(96, 0), "test": Pictures(24, 1)}


def net(num_classes=10, width=8):
    block = lambda cin, cout, stride: nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(block(3, width, 1), block(width, width, 1), block(width, 2 * width, 2),
                         block(2 * width, 2 * width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))


def not_a_model():
    return 3
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "mycode.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_factory_builds_the_model_with_the_run_classes_and_options(user_code):
    model = create("mycode:net", num_classes=3, width=4)
    assert model[-1].out_features == 3 and model[0][0].out_channels == 4
    with pytest.raises(FspkdError, match="cannot import 'nowhere'"):
        create("nowhere:net")
    with pytest.raises(FspkdError, match="module 'mycode' has no attribute 'nett'"):
        create("mycode:nett")
    with pytest.raises(FspkdError, match="built a int, not an nn.Module"):
        create("mycode:not_a_model")


def test_a_python_dataset_is_read_into_splits(user_code):
    splits = load_dataset("python:mycode:splits", val_split=0.25)
    assert splits.num_classes == 3 and len(splits.train) == 72 and len(splits.val) == 24 and len(splits.test) == 24
    assert splits.train.images.dtype.is_floating_point is False and splits.train.images.shape[1:] == (3, 16, 16)
    assert load_dataset("python:mycode:splits", image_size=8).train.images.shape[-1] == 8
    with pytest.raises(FspkdError, match="expected a Dataset of \\(image, label\\)"):
        load_dataset("python:mycode:torch")


def test_fsp_distills_between_the_users_own_networks_on_found_sections(user_code, capsys):
    tiny = ["--data", "python:mycode:splits", "--batch-size", "16", "--eval-every", "4", "--quiet"]
    assert main(["train", *tiny, "--model", "mycode:net", "--model-option", "width=16", "--iterations", "4",
                 "--out", "teacher"]) == 0
    assert main(["distill", *tiny, "--method", "fsp", "--teacher", "teacher", "--model", "mycode:net",
                 "--model-option", "width=16", "--stage1-iterations", "4", "--iterations", "4", "--out", "fsp"]) == 0
    summary = json.loads((user_code / "fsp" / "summary.json").read_text())
    assert summary["method"] == "fsp" and 0 <= summary["test_acc"] <= 100


def test_log_tensorboard_copies_the_metrics_rows(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic:64,16", "--batch-size", "16", "--eval-every", "2", "--quiet",
                 "--model", "resnet8", "--iterations", "2", "--log", "tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"task/loss", "task/task_loss", "task/lr"} <= set(events.Tags()["scalars"])


def test_a_missing_tracker_fails_in_one_line_with_the_pip_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    args = ["train", "--data", "synthetic:64,16", "--batch-size", "16", "--quiet", "--model", "resnet8",
            "--iterations", "2", "--log", "wandb", "--out", str(tmp_path / "run")]
    with pytest.raises(FspkdError, match=r"log 'wandb' needs 'wandb': pip install 'fspkd\[wandb\]'"):
        from fspkd.core.settings import resolve_config
        from fspkd.training.loggers import open_tracker

        open_tracker(resolve_config({"log": "wandb"}), tmp_path)
    assert main(args) == 2 and not (tmp_path / "run").exists()  # refused before the run folder is made


def test_log_wandb_sends_each_metrics_row_to_one_run(tmp_path, monkeypatch):
    import sys
    import types

    calls = {"init": [], "rows": [], "finished": 0}
    run = types.SimpleNamespace(log=calls["rows"].append,
                                finish=lambda: calls.__setitem__("finished", calls["finished"] + 1))
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls["init"].append(kwargs) or run
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic:64,16", "--batch-size", "16", "--eval-every", "2", "--quiet",
                 "--model", "resnet8", "--iterations", "2", "--log", "wandb", "--out", str(out)]) == 0
    [init] = calls["init"]
    assert init["project"] == "fspkd" and init["id"] == (out / "wandb-run-id").read_text().strip()
    assert calls["rows"] and all("task/loss" in row for row in calls["rows"]) and calls["finished"] == 1


def test_log_wandb_offline_writes_a_run_without_an_account(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic:64,16", "--batch-size", "16", "--eval-every", "2", "--quiet",
                 "--model", "resnet8", "--iterations", "2", "--log", "wandb", "--out", str(out)]) == 0
    [log] = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert log.stat().st_size > 0


def test_the_api_gets_each_metrics_row_through_a_callback(tmp_path):
    import fspkd

    rows = []
    fspkd.train({"data": "synthetic:64,16", "batch_size": 16, "eval_every": 2, "model": "resnet8",
                 "task": {"iterations": 4}}, tmp_path / "run", progress=False, on_metrics=rows.append)
    written = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [row["iteration"] for row in rows] == [int(row["iteration"]) for row in written] == [2, 4]
    assert all(row["images_per_s"] > 0 and "loss" in row and "test_acc" in row for row in rows)
