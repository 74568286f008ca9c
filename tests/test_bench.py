"""``fspkd bench`` at a tiny size: it runs every case and writes the ratios (no timing is asserted)."""

import json

import pytest

from fspkd.cli import main

RATIOS = ("stage1_live_over_plain", "stage1_stored_over_plain", "data_speedup_over_per_image",
          "data_share_of_step", "fsp_speedup_over_naive", "fast_teacher_live_speedup")


def test_bench_writes_every_ratio_for_every_pair(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fspkd.experiments.bench.DATA_BATCHES", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--pairs", "resnet14:resnet8", "--batch-size", "8", "--repeats", "1", "--steps", "1",
                 "--compare-threads", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    pair = results["resnet14:resnet8"]
    assert set(RATIOS) <= set(pair["ratios"])
    assert all(value > 0 for value in pair["ratios"].values())
    assert set(pair["ms"]) == {"plain", "stage1_live", "stage1_live_no_fast_teacher", "stage1_stored", "fsp_ours",
                                "fsp_naive", "plain_threads_1"}
    assert set(pair["peak_mb"]) == set(pair["ms"])
    assert results["settings"]["batch_size"] == 8 and results["settings"]["fsp_first"] == "before"
    assert "stage1_stored_over_plain" in capsys.readouterr().out


def test_bench_times_the_fast_recipe_taps(tmp_path, monkeypatch):
    monkeypatch.setattr("fspkd.experiments.bench.DATA_BATCHES", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--pairs", "resnet14:resnet14", "--batch-size", "4", "--repeats", "1",
                 "--fsp-first", "after", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["fsp_first"] == "after"
    assert results["resnet14:resnet14"]["ratios"]["stage1_stored_over_plain"] > 0


@pytest.mark.parametrize("args, message", [(["--pairs", "resnet20"], "--pairs"),
                                           (["--pairs", "resnet20:nonet"], "unknown model"),
                                           (["--repeats", "0"], "--repeats"),
                                           (["--compare-threads", "two"], "--compare-threads")])
def test_bench_refuses_bad_arguments(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err
