"""``fspkd bench`` at a tiny size: it runs every case and writes the ratios (no timing is asserted)."""

import json

import pytest
import torch

from fspkd.cli import main
from fspkd.experiments.bench import format_table
from fspkd.experiments.overhead import bench_overhead, step_cases
from fspkd.models import create

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
    printed = capsys.readouterr().out
    assert "stage1_stored_over_plain" in printed and "distiller_over_by_hand" in printed
    assert set(results["overhead"]["ms"]) == {"by_hand", "distiller", "engine"}


def test_bench_times_the_fast_recipe_taps(tmp_path, monkeypatch):
    monkeypatch.setattr("fspkd.experiments.bench.DATA_BATCHES", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--pairs", "resnet14:resnet14", "--batch-size", "4", "--repeats", "1",
                 "--fsp-first", "after", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["fsp_first"] == "after"
    assert results["resnet14:resnet14"]["ratios"]["stage1_stored_over_plain"] > 0


@pytest.mark.parametrize("layout, other", [("--channels-last", "nchw"), ("--no-channels-last", "channels_last")])
def test_bench_times_the_other_layout_beside_the_main_one(layout, other, tmp_path, monkeypatch):
    monkeypatch.setattr("fspkd.experiments.bench.DATA_BATCHES", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--pairs", "resnet14:resnet8", "--batch-size", "4", "--repeats", "1", layout,
                 "--compare-layouts", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["channels_last"] == (other == "nchw")
    pair = results["resnet14:resnet8"]
    assert {f"{case}_{other}" for case in ("plain", "stage1_live", "stage1_stored")} <= set(pair["ms"])
    assert {"channels_last_plain_speedup", "channels_last_live_speedup", "channels_last_stored_speedup",
            f"stage1_stored_over_plain_{other}"} <= set(pair["ratios"])


def test_bench_times_a_pair_of_other_widths_through_connectors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fspkd.experiments.bench.DATA_BATCHES", 2)
    out = tmp_path / "bench.json"
    assert main(["bench", "--pairs", "resnet14:shufflenetv2,resnet14:resnet8", "--batch-size", "4", "--repeats", "1",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["resnet14:shufflenetv2"]["connectors"] and not results["resnet14:resnet8"]["connectors"]
    assert results["resnet14:shufflenetv2"]["ratios"]["stage1_stored_over_plain"] > 0
    # the hand-written step has no connectors: the overhead is timed on the pair of equal widths
    assert "hand-written step, resnet14 -> resnet8" in capsys.readouterr().err and "overhead" in results


@pytest.mark.parametrize("args, message", [(["--pairs", "resnet20"], "--pairs"),
                                           (["--pairs", "resnet20:nonet"], "unknown model"),
                                           (["--repeats", "0"], "--repeats"),
                                           (["--compare-threads", "two"], "--compare-threads")])
def test_bench_refuses_bad_arguments(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_overhead_cases_take_the_same_step_and_report_ratios_with_their_range(tmp_path, monkeypatch):
    torch.manual_seed(0)
    student, teacher = create("resnet8"), create("resnet14")
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4) % 10)]
    cases = step_cases(student, teacher, batches, torch.device("cpu"))
    for i in range(3):  # the same steps from the same weights: the same losses at every step
        losses = [case(i) for case in cases.values()]
        assert all(torch.allclose(losses[0], loss, rtol=1e-5) for loss in losses[1:]) and losses[0] > 0
    result = bench_overhead(student, teacher, batches, repeats=2, device=torch.device("cpu"))
    assert set(result["ms"]) == set(cases)
    assert all(r["min"] <= r["median"] <= r["max"] for r in result["ratios"].values())
    assert "stage 1 step distiller" in format_table({"data": {"ms": {"batch_loader": 1.0, "per_image_pil": 2.0},
                                                               "peak_mb": {"batch_loader": None,
                                                                           "per_image_pil": None}},
                                                      "overhead": result})


def test_the_overhead_cases_stay_finite_under_a_deep_random_teacher():
    # the raw Eq. 2 loss of a random ResNet-56 overflowed within 10 steps of lr 1e-6 and ended the bench
    torch.manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)]
    cases = step_cases(create("resnet20"), create("resnet56"), batches, torch.device("cpu"))
    for i in range(10):
        losses = [case(i) for case in cases.values()]
        assert all(torch.isfinite(loss) and torch.allclose(losses[0], loss, rtol=1e-5) for loss in losses)
