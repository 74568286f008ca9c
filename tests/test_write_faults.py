"""Writes that fail (a full disk, a read-only folder) and writers killed mid-write (issue 31, point 4): one line
naming the file and the cause, the previous checkpoint kept, no temporary file left behind; the data cache,
which only saves time, falls back to memory with a warning."""

import builtins
import errno
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datafakes import write_image_folder
from safetensors import SafetensorError

import fspkd.core.checkpoint as checkpoint_module
import fspkd.data.cache as cache_module
from fspkd.cli import main
from fspkd.core.atomic import atomic_write, remove_stale_temporaries, write_text_atomic
from fspkd.core.checkpoint import load_checkpoint, save_checkpoint
from fspkd.core.errors import FspkdError
from fspkd.data.cache import cached_decode
from fspkd.data.sets import DecodedDataset, ImageSet
from fspkd.training.runlog import MetricsFile

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--data", "synthetic:64,32", "--model", "resnet8", "--batch-size", "8", "--eval-every", "2", "--quiet"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "cache"))


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes: write raises ENOSPC, as a real full disk does."""

    room = 256

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def full_disk_open(real_open=builtins.open):
    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".tmp"):
            return FullDisk(path, "w")
        return real_open(path, mode, *args, **kwargs)
    return fake_open


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_a_checkpoint_on_a_full_disk_names_the_file_and_the_cause_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    monkeypatch.setattr(checkpoint_module, "open", full_disk_open(), raising=False)
    with pytest.raises(FspkdError) as caught:
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(10_000)})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: cannot write the checkpoint (")
    assert "No space left on device" in message and "MiB free there" in message
    assert "unexpected pos" not in message
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_torch_reporting_a_failed_write_as_runtime_error_is_one_line_too(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def torch_save_on_a_full_disk(obj, file):  # torch writing by path: no OSError behind its RuntimeError
        file.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 628480 vs 628372")

    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(FspkdError, match=rf"^{re.escape(str(path))}: cannot write the checkpoint \(RuntimeError: "
                       r".*unexpected pos 628480 vs 628372; [\d.]+ MiB free there"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_runtime_error_of_the_payload_itself_is_not_blamed_on_the_disk(tmp_path):
    def write(path):
        raise RuntimeError("a bug, not a disk")
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "f", write)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")])
def test_a_read_only_folder_names_the_file_and_the_cause(tmp_path, monkeypatch, code, words):
    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path))
    monkeypatch.setattr(checkpoint_module.atomic_write.__globals__["tempfile"], "mkstemp", mkstemp)
    with pytest.raises(FspkdError, match=rf"{re.escape(str(tmp_path / 'config.yaml'))}: cannot write the run "
                       rf"settings \({words} in {re.escape(str(tmp_path))}\)"):
        write_text_atomic(tmp_path / "config.yaml", "x: 1\n", "the run settings")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_one_line(capsys, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["train", "--out", str(out), "--iterations", "2", *TINY]) == 2
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fspkd: error: ") and str(out) in err[0], err


def test_a_run_whose_checkpoint_write_fails_stops_in_one_line_and_keeps_the_last_checkpoint(capsys, tmp_path,
                                                                                             monkeypatch):
    out = tmp_path / "run"
    real_save, saves = checkpoint_module._torch_save, []

    def save_then_fill_the_disk(payload, path):
        saves.append(path)
        if len(saves) > 1:  # the first last.pt is written; then the disk is full
            with FullDisk(path, "w") as file:
                torch.save(payload, file)
        real_save(payload, path)

    monkeypatch.setattr(checkpoint_module, "_torch_save", save_then_fill_the_disk)
    assert main(["train", "--out", str(out), "--iterations", "6", *TINY]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert re.fullmatch(rf"fspkd: error: {re.escape(str(out / 'checkpoints' / 'last.pt'))}: cannot write the "
                        r"checkpoint \(No space left on device; [\d.]+ MiB free there.*\)", lines[0]), lines[0]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["position"] == [0, 0, 2]
    assert temporaries(out) == []
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0  # space again: it goes on
    assert (out / "summary.json").exists()


def test_the_metrics_file_names_itself_when_it_cannot_be_written(tmp_path):
    folder = tmp_path / "metrics.csv"
    folder.mkdir()  # not a file: open() fails as on a read-only disk
    with pytest.raises(FspkdError, match=rf"{re.escape(str(folder))}: cannot write the training metrics \("):
        MetricsFile(folder).append({"student": 0})


def decoded_set() -> DecodedDataset:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    return DecodedDataset(ImageSet(images, torch.arange(4) % 2), None, ["a", "b"])


def test_a_full_disk_under_the_data_cache_warns_and_goes_on_from_memory(tmp_path, monkeypatch, capsys):
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")

    def save_file(tensors, path):
        Path(path).write_bytes(b"half")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(cache_module, "save_file", save_file)
    decoded = cached_decode(source, "imagefolder", 8, tmp_path / "cache", decoded_set)
    assert decoded.classes == ["a", "b"] and len(decoded.train.labels) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fspkd: warning: the decoded data is not cached (") and \
        "No space left on device" in err[0] and "goes on from memory" in err[0], err
    assert list((tmp_path / "cache").iterdir()) == []  # no half entry, no temporary file


def test_a_cache_folder_that_cannot_be_created_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "pets", ["cat", "dog"], per_class=6)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("FSPKD_CACHE", str(tmp_path / "file" / "cache"))
    assert main(["train", "--data", f"imagefolder:{tmp_path / 'pets'}", "--out", str(tmp_path / "o"),
                 "--model", "resnet8", "--batch-size", "4", "--iterations", "2", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fspkd: warning: the decoded data is not cached (") and \
        str(tmp_path / "file" / "cache") in err[0], err


def test_temporary_files_of_a_writer_killed_with_sigkill_are_removed_at_the_next_start(tmp_path):
    """A real kill -9 in the middle of a write, then a resume: the torn temporary file is removed; a live
    writer's temporary file and another host's are left alone."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--iterations", "2", *TINY]) == 0
    script = textwrap.dedent(f"""
        import sys, time
        from fspkd.core.atomic import atomic_write
        def write(path):
            path.write_bytes(b"half a checkpoint")
            print("writing", flush=True)
            time.sleep(600)
        atomic_write({str(out / "checkpoints" / "last.pt")!r}, write, "the checkpoint")
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    writer = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(timeout=60)
    torn = temporaries(out)
    assert len(torn) == 1 and torn[0].startswith(".last.pt.") and f"-{writer.pid}." in torn[0]
    live = out / f".metrics.csv.{torn[0].split('.')[3].rsplit('-', 1)[0]}-{os.getpid()}.abc123.tmp"
    foreign = out / f".metrics.csv.otherhost-{writer.pid}.abc123.tmp"
    live.write_text("being written")
    foreign.write_text("another machine's")
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert temporaries(out) == sorted([foreign.name, live.name])
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    assert remove_stale_temporaries(out) == []


def test_a_run_folder_that_turns_out_read_only_is_one_line_and_released(capsys, tmp_path, monkeypatch):
    """The claim succeeds but config.yaml cannot be written (simulated: root ignores chmod): one line, and the
    claim is released, so the same --out works once the disk does."""
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)
    monkeypatch.setattr(checkpoint_module.atomic_write.__globals__["tempfile"], "mkstemp", mkstemp)
    out = tmp_path / "o"
    assert main(["train", "--out", str(out), "--iterations", "2", *TINY]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0] == (f"fspkd: error: {out / 'config.yaml'}: cannot write the run settings "
                        f"(Read-only file system in {out})")
    assert not out.exists()
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--iterations", "2", *TINY]) == 0
