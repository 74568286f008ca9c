"""Bad input through the real command line: ``fspkd.cli.main`` exits non-zero with exactly one readable
``fspkd: error: ...`` line on stderr and no traceback, creates no output folder, and leaves an earlier run
byte for byte as it was."""

import re
from pathlib import Path

import pytest
import torch
from datafakes import crafted_pickle, make_tar_gz, write_cifar10_folder, write_image_folder

from fspkd.cli import main
from fspkd.core.checkpoint import load_checkpoint

TINY = ["--data", "synthetic:320,100", "--batch-size", "32", "--iterations", "2", "--eval-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished resnet8 run (also the teacher of the distillation cases)."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert main(["train", "--model", "resnet8", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))


def snapshot(folder: Path) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def fails_cleanly(capsys, argv: list[str], earlier: Path, pattern: str, starts_run: bool = False) -> str:
    """Run the CLI, check the failure is one matching line and that nothing was written (but the run's own
    folder, if ``starts_run``); return the line."""
    before = snapshot(earlier)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    out_existed = out is not None and out.exists()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("fspkd: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(earlier) == before
    if out is not None and not out_existed and not starts_run:
        assert not out.exists(), f"{out} was created"
    return lines[0]


def train_on(data: str, out: Path) -> list[str]:
    return ["train", "--data", data, "--out", str(out), "--batch-size", "4", "--iterations", "2", "--quiet"]


def test_missing_and_empty_data_paths(capsys, earlier, tmp_path):
    fails_cleanly(capsys, train_on(f"cifar10:{tmp_path / 'nope'}", tmp_path / "o"), earlier, r"nope: no such file")
    fails_cleanly(capsys, train_on("cifar10:", tmp_path / "o"), earlier, r"path after ':' is empty")
    (tmp_path / "empty").mkdir()
    fails_cleanly(capsys, train_on(f"imagefolder:{tmp_path / 'empty'}", tmp_path / "o"), earlier,
                  r"empty: found no 'train/'")


def test_corrupt_and_truncated_cifar_archives(capsys, earlier, tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip" * 10)
    fails_cleanly(capsys, train_on(f"cifar10:{junk}", tmp_path / "o"), earlier, r"junk\.tar\.gz")
    archive = make_tar_gz(write_cifar10_folder(tmp_path / "src")["folder"], tmp_path / "cifar.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    fails_cleanly(capsys, train_on(f"cifar10:{archive}", tmp_path / "o"), earlier,
                  r"cifar\.tar\.gz.*truncated or corrupt")


def test_a_crafted_pickle_in_an_archive_is_refused_not_executed(capsys, earlier, tmp_path):
    marker = tmp_path / "pwned"
    folder = write_cifar10_folder(tmp_path / "src")["folder"]
    (folder / "data_batch_2").write_bytes(crafted_pickle(marker))
    archive = make_tar_gz(folder, tmp_path / "evil.tar.gz")
    fails_cleanly(capsys, train_on(f"cifar10:{archive}", tmp_path / "o"), earlier,
                  r"evil\.tar\.gz:cifar-10-batches-py/data_batch_2.*refused")
    assert not marker.exists()


def test_image_folder_with_an_unreadable_image_or_no_classes(capsys, earlier, tmp_path):
    write_image_folder(tmp_path / "pets", ["cat", "dog"], per_class=3)
    (tmp_path / "pets" / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    fails_cleanly(capsys, train_on(f"imagefolder:{tmp_path / 'pets'}", tmp_path / "o"), earlier,
                  r"pets/train/dog/broken\.jpg: unreadable image")
    write_image_folder(tmp_path / "flat", ["cat"], per_class=2)
    for image in (tmp_path / "flat" / "train" / "cat").iterdir():  # images straight under train/
        image.rename(tmp_path / "flat" / "train" / image.name)
    fails_cleanly(capsys, train_on(f"imagefolder:{tmp_path / 'flat'}", tmp_path / "o"), earlier,
                  r"flat/train: no class sub-folders")


def test_fsp_channel_widths_that_differ_list_both_and_what_fits(capsys, earlier, tmp_path):
    argv = ["distill", "--teacher", str(earlier), "--model", "resnet14", "--model-option", "width=2",
            "--fsp-connector", "none", "--out", str(tmp_path / "o"), *TINY]
    line = fails_cleanly(capsys, argv, earlier, r"pair 1 .*student \(32, 32\), teacher \(16, 16\)")
    assert "pair 3" in line and "student (64, 128), teacher (32, 64)" in line
    assert "--model-option width=1" in line


def test_checkpoint_of_another_architecture_lists_keys_and_shapes(capsys, earlier, tmp_path):
    argv = ["distill", "--teacher", str(earlier / "final.pt"), "--teacher-model", "resnet14",
            "--out", str(tmp_path / "o"), *TINY]
    fails_cleanly(capsys, argv, earlier, r"cannot load .*final\.pt into resnet14: \d+ missing keys \(layer1\.1\.")
    argv = ["eval", "--weights", str(earlier), "--model", "resnet18", "--data", "synthetic:320,100"]
    fails_cleanly(capsys, argv, earlier, r"differing shapes \(conv1\.weight: file \(16, 3, 3, 3\) vs model")


def test_a_file_that_is_not_a_checkpoint(capsys, earlier, tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("hello")
    argv = ["distill", "--teacher", str(junk), "--out", str(tmp_path / "o"), *TINY]
    fails_cleanly(capsys, argv, earlier, r"notes\.pt: not a readable checkpoint")
    fails_cleanly(capsys, ["eval", "--weights", str(junk)], earlier, r"notes\.pt: not a readable checkpoint")


def test_unknown_model_and_method_names_list_the_valid_ones(capsys, earlier, tmp_path):
    fails_cleanly(capsys, ["train", "--model", "resnet21", "--out", str(tmp_path / "o"), *TINY], earlier,
                  r"unknown model 'resnet21'.*valid models: .*resnet20, ")
    fails_cleanly(capsys, ["distill", "--method", "fps", "--teacher", str(earlier), "--out", str(tmp_path / "o"),
                           *TINY], earlier, r"unknown method 'fps'.*valid methods: plain, fsp, kd, fitnet, copy")


@pytest.mark.parametrize("flags, pattern", [
    (["--iterations", "-3"], r"iterations must be at least 1, got -3"),
    (["--iterations", "0"], r"iterations must be at least 1, got 0"),
    (["--lr", "0"], r"lr must be a finite number > 0, got 0"),
    (["--lr", "-0.1"], r"lr must be a finite number > 0, got -0.1"),
    (["--val-split", "1"], r"val_split must be in \[0, 1\), got 1"),
    (["--val-split", "1.5"], r"val_split must be in \[0, 1\), got 1.5"),
    (["--val-split", "-0.2"], r"val_split must be in \[0, 1\), got -0.2"),
    (["--batch-size", "0"], r"batch_size must be a positive integer, got 0"),
    (["--precision", "fp16", "--device", "cpu"], r"precision fp16 needs a CUDA device .* use bf16 on CPU"),
])
def test_bad_numbers(capsys, earlier, tmp_path, flags, pattern):
    fails_cleanly(capsys, ["train", "--out", str(tmp_path / "o"), *TINY, *flags], earlier, pattern)


def test_unknown_configuration_keys_name_the_nearest_valid_one(capsys, earlier, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: resnet8\nbacth_size: 32\n")
    fails_cleanly(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")], earlier,
                  r"unknown key 'bacth_size' in .*run\.yaml; did you mean 'batch_size'\?")
    config.write_text("task:\n  iterations: 2\n  learning_rate: 0.1\n")
    fails_cleanly(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "o")], earlier,
                  r"unknown key 'learning_rate' in .*run\.yaml, task; valid keys: iterations, lr")


def test_an_existing_run_is_refused_or_resumed_never_overwritten(capsys, earlier, tmp_path):
    fails_cleanly(capsys, ["train", "--model", "resnet8", "--out", str(earlier), *TINY], earlier,
                  r"already holds a run; pass --resume")
    fails_cleanly(capsys, ["train", "--model", "resnet8", "--out", str(earlier), "--resume", *TINY[:-1],
                           "--weight-decay", "0.5", "--quiet"], earlier, r"--resume: the settings given differ .* in task")
    fails_cleanly(capsys, ["distill", "--out", str(tmp_path / "none"), "--resume"], earlier,
                  r"--resume: .*none holds no run to continue")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    fails_cleanly(capsys, ["train", "--out", str(other), *TINY], earlier, r"not empty and holds no fspkd run")
    assert (other / "keep.txt").read_text() == "mine"
    before = snapshot(earlier)
    assert main(["train", "--out", str(earlier), "--resume", "--quiet"]) == 0  # finished: nothing to redo
    assert snapshot(earlier) == before


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(capsys, earlier, tmp_path):
    argv = ["distill", "--teacher", str(earlier), "--model", "resnet8", "--stage1-iterations", "60",
            "--stage1-lr", "10", "--fsp-lambda", "1", "--fsp-recipe", "paper", "--out", str(tmp_path / "boom"), *TINY]
    fails_cleanly(capsys, argv, earlier, r"non-finite loss at iteration \d+ of stage1 \(term fsp_loss: (nan|inf)\);"
                  r" the last good checkpoint .*last\.pt is kept", starts_run=True)
    kept = load_checkpoint(tmp_path / "boom" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_non_finite_gradients_are_never_applied_and_the_run_resumes_at_a_lower_lr(capsys, earlier, tmp_path):
    out = tmp_path / "diverged"
    argv = ["train", "--data", "synthetic:512,256", "--model", "resnet8", "--batch-size", "16", "--iterations", "40",
            "--eval-every", "2", "--lr", "1e6", "--quiet", "--out", str(out)]
    fails_cleanly(capsys, argv, earlier, r"non-finite (gradients|loss) at iteration \d+ of task.*; the last good "
                  r"checkpoint .*last\.pt is kept", starts_run=True)
    kept = load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.01", "--quiet"]) == 0
    assert "# resumed with task.lr 1e+06 -> 0.01" in (out / "config.yaml").read_text()
    assert main(["train", "--out", str(out), "--resume", "--batch-size", "32", "--quiet"]) == 2  # not a rate
    assert "differ from those of the run" in capsys.readouterr().err


def test_a_teacher_of_other_classes_and_taps_that_are_not_maps_are_refused_before_training(capsys, earlier,
                                                                                          tmp_path):
    for split in ("train", "test"):
        write_image_folder(tmp_path / "two", ["cat", "dog"], per_class=8, split=split)
    argv = ["distill", "--method", "kd", "--teacher", str(earlier), "--model", "resnet8", "--out",
            str(tmp_path / "kd"), *TINY[2:], "--batch-size", "8", "--data", f"imagefolder:{tmp_path / 'two'}",
            "--image-size", "32", "--normalize", "imagenet"]
    fails_cleanly(capsys, argv, earlier, "the student has 2 classes but the teacher 10")
    argv = ["distill", "--teacher", str(earlier), "--model", "resnet8", "--fsp-pairs", "layer3>linear",
            "--out", str(tmp_path / "fsp"), *TINY]
    fails_cleanly(capsys, argv, earlier, r"FSP pair layer3 -> linear has maps of shapes \(64, 8, 8\) and \(10,\)")
