"""Accuracy of one network and of an ensemble (averaged softmax), on a held-out image set."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn

from fspkd.data import BatchLoader, ImageSet
from fspkd.methods.base import eval_mode
from fspkd.training.distributed import Context, sum_over_ranks


@torch.inference_mode()
def predict(model: nn.Module, images: ImageSet, mean, std, *, batch_size: int = 500,
            ctx: Context = Context(), channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and labels of this rank's share of ``images``, in order."""
    loader = BatchLoader(images.images, images.labels, batch_size, mean=mean, std=std, train=False,
                         augment=False, rank=ctx.rank, world_size=ctx.world_size, channels_last=channels_last)
    probs, labels = [], []
    with eval_mode(model):
        for x, y in loader:
            probs.append(model(x.to(ctx.device)).float().softmax(dim=1).cpu())
            labels.append(y)
    if not probs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)


def accuracy(probs: torch.Tensor, labels: torch.Tensor, ctx: Context = Context()) -> float:
    """Top-1 accuracy in percent over all ranks' shares."""
    correct = (probs.argmax(dim=1) == labels).sum() if len(labels) else torch.tensor(0)
    counts = torch.tensor([float(correct), float(len(labels))], device=ctx.device)
    correct, total = sum_over_ranks(counts, ctx).tolist()
    return 100.0 * correct / max(total, 1.0)


def ensemble_accuracy(all_probs: Sequence[torch.Tensor], labels: torch.Tensor, ctx: Context = Context()) -> float:
    """Accuracy of the averaged softmax of several networks (the paper's ensembles), over all ranks' shares.

    Every network's probabilities on a rank cover the same shard (``predict`` shards identically), so each rank
    averages its rows and only the counts of hits are summed over ranks.
    """
    if not len(labels):
        return accuracy(torch.zeros(0, 0), labels, ctx)
    mean_probs = torch.stack(list(all_probs)).mean(dim=0)
    return accuracy(mean_probs, labels, ctx)


def disagreement(all_probs: Sequence[torch.Tensor], ctx: Context = Context()) -> float:
    """How diverse an ensemble is: the share (%) of images on which two members' top-1 predictions differ,
    averaged over all pairs of members and over all ranks' shares."""
    predictions = [probs.argmax(dim=1) for probs in all_probs]
    pairs = list(itertools.combinations(predictions, 2))
    differing = sum(float((a != b).sum()) for a, b in pairs)
    counts = torch.tensor([differing, float(len(pairs) * len(predictions[0]))], device=ctx.device)
    differing, total = sum_over_ranks(counts, ctx).tolist()
    return 100.0 * differing / max(total, 1.0)
