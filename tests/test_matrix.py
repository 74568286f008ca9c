"""The settings matrix: every arm of every cell, results written per arm, scratch shared, re-runs skip."""

import json

import pytest

from fspkd.cli import main
from fspkd.core.errors import FspkdError
from fspkd.experiments import matrix

SPEC = """
data: synthetic:320,100
val_split: 0.1
normalize: dataset
students: 2
seed: 0
settings: {batch_size: 32}
arms: [scratch, fsp, kd]
teachers:
  small: {model: resnet8, train: {iterations: 6, lr: 0.05}, eval_every: 3}
cells:
  x: {teacher: small, student: resnet8, budgets: [4], gain_to_keep: {4: 1.0}}
  y: {teacher: small, student: resnet8, budgets: [4], extra_arms: [fsp-stored]}
"""


def test_a_tiny_matrix_writes_one_result_per_arm_and_shares_scratch(tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--matrix", "m.yaml", "--out", "runs", "--results", "results", "--quiet"]) == 0
    names = sorted(p.stem for p in (tmp_path / "results").glob("*.json"))
    assert names == ["scratch-resnet8-b4", "teacher-small", "x-b4-fsp", "x-b4-kd", "y-b4-fsp", "y-b4-fsp-stored",
                     "y-b4-kd"]
    fsp = json.loads((tmp_path / "results" / "x-b4-fsp.json").read_text())
    assert len(fsp["finals"]) == 2 and len(fsp["curves"]) == 2 and fsp["core_hours"] > 0
    assert fsp["config"]["method"] == "fsp" and fsp["config"]["task"]["iterations"] == 4
    report = (tmp_path / "results" / "report.md").read_text()
    assert "## Cell (x) small -> resnet8, 4 task-stage iterations" in report
    assert report.count("| fsp |") == 2 and report.count("| fsp-stored |") == 1
    stored = json.loads((tmp_path / "results" / "y-b4-fsp-stored.json").read_text())
    assert stored["config"]["stored_fsp"] is True and fsp["config"]["stored_fsp"] is not True
    assert "at or above scratch's mean minus one std" in report
    assert "earlier gain of 1.00 points kept" in report  # only cell x names a gain to keep
    assert (tmp_path / "results" / "figures" / "cell-y-b4.png").stat().st_size > 0

    # a re-run trains nothing: every arm has its result; a result of an earlier version, without the ensemble's
    # disagreement, gets it from the students' weights and keeps everything else
    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")
    monkeypatch.setattr("fspkd.training.run.train", refuse)
    old = {k: v for k, v in fsp.items() if k != "disagreement"}
    (tmp_path / "results" / "x-b4-fsp.json").write_text(json.dumps(old))
    assert main(["study", "--matrix", "m.yaml", "--out", "runs", "--results", "results", "--quiet"]) == 0
    refreshed = json.loads((tmp_path / "results" / "x-b4-fsp.json").read_text())
    assert refreshed.pop("disagreement") == pytest.approx(fsp["disagreement"]) and refreshed == old
    # a deleted result is rebuilt from its finished run folder, still without training; a summary of an earlier
    # version, without the ensemble's disagreement, has it measured again from the students' weights
    kd = json.loads((tmp_path / "results" / "y-b4-kd.json").read_text())
    (tmp_path / "results" / "y-b4-kd.json").unlink()
    summary = json.loads((tmp_path / "runs" / "y-b4-kd" / "summary.json").read_text())
    del summary["ensemble_val_disagreement"]
    (tmp_path / "runs" / "y-b4-kd" / "summary.json").write_text(json.dumps(summary))
    assert main(["study", "--matrix", "m.yaml", "--cells", "y", "--out", "runs", "--results", "results",
                 "--quiet"]) == 0
    rebuilt = json.loads((tmp_path / "results" / "y-b4-kd.json").read_text())
    assert rebuilt["finals"] == kd["finals"] and rebuilt["disagreement"] == pytest.approx(kd["disagreement"])
    assert rebuilt["ensemble"] == pytest.approx(kd["ensemble"])


def test_shuffled_students_and_weight_copies_fill_the_table1_view(tmp_path, monkeypatch):
    spec = SPEC.replace("arms: [scratch, fsp, kd]", "arms: [scratch, fsp]").split("cells:")[0]
    spec += ("table1: {cell: t, full: 4, third: 2}\n"
             "cells:\n  t: {teacher: small, student: resnet8, budgets: [2, 4], extra_arms: [fsp-shuffled, copy]}\n")
    (tmp_path / "m.yaml").write_text(spec)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--matrix", "m.yaml", "--out", "runs", "--results", "results", "--quiet"]) == 0
    shuffled = json.loads((tmp_path / "results" / "t-b4-fsp-shuffled.json").read_text())
    # one run per student, each with its own stage 1 on targets shuffled with its own seed
    members = [tmp_path / "runs" / "t-b4-fsp-shuffled" / f"member-{k}" for k in (1, 2)]
    assert shuffled["members"] == 2 and len(shuffled["finals"]) == 2 and len(shuffled["curves"]) == 2
    assert [json.loads((m / "summary.json").read_text())["stages"]["stage1"]["iterations"] for m in members] == [4, 4]
    assert shuffled["stages"]["stage1"]["iterations"] == 8
    assert 0 <= shuffled["ensemble"] <= 100 and 0 <= shuffled["disagreement"] <= 100
    copy = json.loads((tmp_path / "results" / "t-b4-copy.json").read_text())
    assert copy["method"] == "copy" and len(copy["finals"]) == 2 and copy["disagreement"] is not None
    report = (tmp_path / "results" / "report.md").read_text()
    assert "## The paper's Table 1 at our scale: cell (t)" in report
    assert report.count("not run yet") == 0 and "| Student*† at a third | 2 |" in report


def test_arms_and_budgets_pick_part_of_a_cell_for_a_second_process(tmp_path, monkeypatch, capsys):
    spec = SPEC.split("cells:")[0] + "cells:\n  x: {teacher: small, student: resnet8, budgets: [2, 4]}\n"
    (tmp_path / "m.yaml").write_text(spec)
    monkeypatch.chdir(tmp_path)
    command = ["study", "--matrix", "m.yaml", "--out", "runs", "--results", "results", "--quiet"]
    # scratch never reads the teacher: asking for it alone trains no teacher
    assert main([*command, "--arms", "scratch", "--budgets", "4"]) == 0
    assert [p.stem for p in (tmp_path / "results").glob("*.json")] == ["scratch-resnet8-b4"]
    assert not (tmp_path / "runs" / "teachers").exists()
    assert main([*command, "--arms", "kd;scratch", "--budgets", "4"]) == 0
    names = sorted(p.stem for p in (tmp_path / "results").glob("*.json"))
    assert names == ["scratch-resnet8-b4", "teacher-small", "x-b4-kd"]
    assert main([*command, "--arms", "fitnet"]) != 0
    assert "--arms: no arm fitnet in these cells" in capsys.readouterr().err


@pytest.mark.parametrize("change, words", [
    ("cells:\n  x: {teacher: big, student: resnet8, budgets: [4]}\n", "cell 'x' needs a student and a teacher"),
    ("cells:\n  x: {teacher: small, student: resnet8, budgets: [0]}\n", "positive task-stage iterations"),
    ("arms: [scratch, dream]\n", "unknown arm 'dream'"),
    ("cells:\n  x: {teacher: small, student: resnet8, budgets: [4], extra_arms: [fsp-magic]}\n", "unknown arm"),
    ("cells:\n  x: {teacher: small, student: resnet8, budgets: [4]}\ntable1: {cell: x, full: 4, third: 2}\n",
     "table1 needs a cell and two of its budgets"),
])
def test_a_bad_matrix_is_refused_in_one_line(tmp_path, change, words):
    head, _, _ = SPEC.partition("cells:" if change.startswith("cells") else "arms:")
    rest = "" if change.startswith("cells") else SPEC[SPEC.index("teachers:"):]
    (tmp_path / "m.yaml").write_text(head + change + rest)
    with pytest.raises(FspkdError, match=words):
        matrix.load_spec(tmp_path / "m.yaml")


def test_the_shipped_matrix_names_the_issue_cells():
    spec = matrix.load_spec(matrix.default_spec())
    assert list(spec["cells"]) == ["a", "b", "c", "d", "e", "f", "g", "h"]
    with pytest.raises(FspkdError, match="no cell z"):
        matrix.select_cells(spec, "a,z")


def test_the_table1_wall_ratio_at_equal_step_price_ignores_the_load_an_arm_ran_under():
    from fspkd.experiments.matrix_report import _equal_price_ratio, table1_section

    def result(wall: float, stages: dict) -> dict:
        return {"training_wall_s": wall, "stages": stages, "finals": [70.0, 71.0], "mean": 70.5, "std": 0.7,
                "ensemble": 72.0, "disagreement": 10.0}

    scratch = result(300.0, {"task": {"iterations": 300, "wall_s": 300.0}})
    # a third of the task iterations plus a stage 1 as long, under twice the load: 2/3 of scratch's steps
    student = result(400.0, {"stage1": {"iterations": 100, "wall_s": 200.0},
                             "task": {"iterations": 100, "wall_s": 200.0, "eval_s": 50.0}})
    spec = {"table1": {"cell": "t", "full": 300, "third": 100}, "cells": {"t": {"student": "resnet8"}}}
    found = {"scratch-resnet8-b300": scratch, "t-b100-fsp": student}
    # by the clock 4/3 of scratch's wall; at equal step price 2/3
    assert "| 400 | 1.33 | 0.67 |" in table1_section(spec, found)
    assert _equal_price_ratio(student, scratch) == "0.67"
    assert _equal_price_ratio(student, None) == "-"


def test_the_table1_rows_not_run_yet_keep_the_table_s_columns():
    from fspkd.experiments.matrix_report import table1_section

    spec = {"table1": {"cell": "t", "full": 4, "third": 2}, "cells": {"t": {"student": "resnet8"}}}
    lines = [line for line in table1_section(spec, {}).splitlines() if line.startswith("|")]
    assert len(lines) == 8 and len({line.count("|") for line in lines}) == 1


def test_an_arm_resumed_from_an_earlier_process_says_its_elapsed_time_is_partial(tmp_path, monkeypatch):
    (tmp_path / "m.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    command = ["study", "--matrix", "m.yaml", "--cells", "x", "--arms", "scratch;kd", "--out", "runs",
               "--results", "results", "--quiet"]
    assert main(command) == 0
    whole = json.loads((tmp_path / "results" / "x-b4-kd.json").read_text())
    assert whole["resumed"] is False and "resumed" not in (tmp_path / "results" / "report.md").read_text()
    # an earlier process left a checkpoint and no summary: this one finishes the arm from it
    (tmp_path / "results" / "x-b4-kd.json").unlink()
    (tmp_path / "runs" / "x-b4-kd" / "summary.json").unlink()
    assert (tmp_path / "runs" / "x-b4-kd" / "checkpoints" / "last.pt").exists()
    assert main(command) == 0
    resumed = json.loads((tmp_path / "results" / "x-b4-kd.json").read_text())
    assert resumed["resumed"] is True and resumed["finals"] == whole["finals"]
    report = (tmp_path / "results" / "report.md").read_text()
    assert f"resumed ({round(resumed['elapsed_s'])} in the last process)" in report
    assert "- Resumed across processes: kd." in report
