"""The demo's shipped data and teacher: counts, checksum, and the teacher's recorded accuracy."""

from safetensors import safe_open

from fspkd.data import load_dataset
from fspkd.experiments.demo import DEMO_DATA, DEMO_TEACHER, DEMO_TEACHER_MODEL, check_demo_data
from fspkd.training.inference import evaluate_checkpoints


def test_shipped_data_matches_its_checksum_and_counts():
    splits = load_dataset(f"cifar10:{check_demo_data()}")
    assert (len(splits.train), len(splits.test), splits.num_classes) == (10_000, 2_000, 10)


def test_shipped_teacher_scores_within_a_point_of_its_recorded_accuracy():
    with safe_open(str(DEMO_TEACHER), "pt") as f:
        recorded = float(f.metadata()["demo_test_acc"])
    result = evaluate_checkpoints([DEMO_TEACHER], data=f"cifar10:{DEMO_DATA}", model=DEMO_TEACHER_MODEL,
                                  normalize="imagenet")
    assert abs(result["networks"][0]["accuracy"] - recorded) <= 1.0
