"""``fspkd eval``: rebuild networks from checkpoints and measure them, alone and as an ensemble."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from fspkd.core.checkpoint import load_checkpoint, load_state_dict_checked, load_state_dict_file, load_weights
from fspkd.core.errors import FspkdError
from fspkd.data import load_dataset, parse_normalize
from fspkd.models import create
from fspkd.training.evaluate import accuracy, disagreement, ensemble_accuracy, predict

# the class count of a foreign state dict is read off its head: ResNets (ours, torchvision), the CIFAR benchmarks'
# VGG and MobileNetV2, ImageNet MobileNetV2
CLASSIFIER_WEIGHTS = ("linear.weight", "fc.weight", "classifier.weight", "classifier.0.weight",
                      "classifier.1.weight")


def evaluate_checkpoints(paths, *, data: str, split: str = "test", model: str | None = None,
                         model_options: dict | None = None, normalize: str | None = None,
                         val_split: float = 0.0, seed: int = 0, image_size: int | None = None) -> dict:
    """Accuracy (percent) of every checkpoint on ``split`` and, for several, of their averaged softmax and the
    members' pairwise disagreement (percent of images)."""
    splits = load_dataset(data, val_split=val_split, seed=seed, image_size=image_size)
    images = getattr(splits, split)
    if images is None:
        raise FspkdError(f"{data} has no {split} split" + (" (use --val-split)" if split == "val" else ""))
    networks, all_probs, labels = [], [], None
    for path in paths:
        net, stats = load_network(Path(path), model, model_options or {}, splits.num_classes)
        mean, std = parse_normalize(normalize or "dataset", splits) if normalize or stats is None else stats
        probs, labels = predict(net, images, mean, std)
        if probs.shape[1] != splits.num_classes:
            raise FspkdError(f"{path}: the network has {probs.shape[1]} classes but {data} has "
                             f"{splits.num_classes}; evaluate it on data with its classes")
        all_probs.append(probs)
        networks.append({"weights": str(path), "accuracy": accuracy(probs, labels)})
    results = {"data": data, "split": split, "images": len(labels), "networks": networks}
    if len(all_probs) > 1:
        results["ensemble_accuracy"] = ensemble_accuracy(all_probs, labels)
        results["disagreement"] = disagreement(all_probs)
    return results


def ensemble_of_students(members: Sequence[tuple[Path, dict]], split: str, **evaluate_options) -> dict:
    """Averaged-softmax accuracy and pairwise disagreement of finished students, each given as (its run folder,
    its ``per_student`` entry of the run's summary), on ``split``: from the predictions the runs stored when every
    student has them on the same labels, else measured again from the weights (``evaluate_checkpoints`` with
    ``evaluate_options``)."""
    stored = [_stored_predictions(folder, student, split) for folder, student in members]
    if all(found is not None for found in stored) and all(torch.equal(labels, stored[0][1]) for _, labels in stored):
        all_probs = [probs for probs, _ in stored]
        return {"ensemble_accuracy": ensemble_accuracy(all_probs, stored[0][1]),
                "disagreement": disagreement(all_probs)}
    weights = [folder / student["weights"] for folder, student in members]
    return evaluate_checkpoints(weights, split=split, **evaluate_options)


def _stored_predictions(folder: Path, student: dict, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(probabilities, labels) on ``split`` from the student's predictions file; None where there is none (a run
    of an earlier version), it lacks the split or cannot be read (the weights are then measured again)."""
    if not student.get("predictions"):
        return None
    try:
        tensors = load_file(str(folder / student["predictions"]))
    except (OSError, SafetensorError):
        return None
    if f"{split}_probs" not in tensors or f"{split}_labels" not in tensors:
        return None
    return tensors[f"{split}_probs"], tensors[f"{split}_labels"]


def model_from_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model stored in one of our checkpoints and load its weights."""
    payload = load_checkpoint(path)
    for key in ("model", "model_name"):
        if key not in payload:
            raise FspkdError(f"{path}: not an fspkd checkpoint (no {key!r} entry); found keys {sorted(payload)}")
    options = payload.get("model_options", {})
    if not isinstance(options, dict):
        raise FspkdError(f"{path}: 'model_options' must be a dict, found {type(options).__name__}")
    model = create(payload["model_name"], payload.get("num_classes", 10), **options)
    load_weights(model, path)
    return model


def load_network(path: Path, model: str | None, options: dict, num_classes: int, features_only: bool = False):
    """The network of ``path`` (one of our run folders or checkpoints, or a foreign state dict with ``model``
    naming its architecture) in eval mode, and the normalisation stored with it (None for foreign files).

    ``features_only`` also accepts a foreign file without the classifier (an ImageNet feature extractor): the
    classifier keeps its fresh weights and the network's ``headless_source`` names the file, so that methods
    which need its outputs can refuse it (``Method.needs_teacher_outputs``).
    """
    if path.is_dir():
        path = path / "final.pt"
    payload = _our_payload(path)
    if payload is not None:
        name = model or payload["model_name"]
        net = create(name, num_classes=payload["num_classes"], **{**payload.get("model_options", {}), **options})
        load_weights(net, path)
        return net.eval(), (tuple(payload["mean"]), tuple(payload["std"]))
    if model is None:
        raise FspkdError(
            f"{path} is not an fspkd checkpoint (a plain state dict): name its architecture "
            "(--teacher-model for a teacher, --model for fspkd eval)"
        )
    state = load_state_dict_file(path)
    head = next((state[k] for k in CLASSIFIER_WEIGHTS if k in state), None)
    net = create(model, num_classes=int(head.shape[0]) if head is not None else num_classes, **options)
    if load_state_dict_checked(net, state, source=str(path), head_optional=features_only).missing_keys:
        net.headless_source = str(path)  # a strict load: only the classifier can be missing
    return net.eval(), None


def _our_payload(path: Path) -> dict | None:
    """Our checkpoint's contents; None for a foreign state dict. A file that is no checkpoint raises."""
    if path.suffix == ".safetensors":
        return None
    payload = load_checkpoint(path)
    return payload if "model_name" in payload else None
