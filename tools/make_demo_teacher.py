"""Package a trained ResNet-20 run as the demo's teacher (maintainers only).

Writes ``src/fspkd/experiments/demo_data/resnet20-cifar10-demo.safetensors``: the run's final weights (a plain
tensor file, no pickle) with metadata saying how it was trained and its accuracy on the demo's test images, which
``tests/test_demo_data.py`` checks against a fresh evaluation.

    python tools/make_demo_teacher.py RUN_FOLDER
"""

import argparse
import json
from pathlib import Path

import yaml
from safetensors.torch import save_file

from fspkd.core.checkpoint import load_state_dict_file
from fspkd.experiments.demo import DEMO_DATA, DEMO_TEACHER, DEMO_TEACHER_MODEL
from fspkd.training.inference import evaluate_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path, help="an fspkd train run folder of a resnet20 with --normalize imagenet")
    run = parser.parse_args().run
    config = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["model"] == DEMO_TEACHER_MODEL and config["normalize"] == "imagenet", config
    acc = evaluate_checkpoints([run / "final.pt"], data=f"cifar10:{DEMO_DATA}",
                               normalize="imagenet")["networks"][0]["accuracy"]
    state = {k: v.contiguous() for k, v in load_state_dict_file(run / "final.pt").items()}
    save_file(state, DEMO_TEACHER, metadata={
        "model": DEMO_TEACHER_MODEL, "normalize": "imagenet", "data": config["data"],
        "val_split": str(config["val_split"]), "iterations": str(config["task"]["iterations"]),
        "batch_size": str(config["batch_size"]), "val_acc": f"{summary['val_acc']:.2f}",
        "demo_test_acc": f"{acc:.2f}",
    })
    print(f"{DEMO_TEACHER}: {DEMO_DATA.name} test accuracy {acc:.2f}%")


if __name__ == "__main__":
    main()
