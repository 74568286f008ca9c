"""Linear probe of a teacher's frozen features on an image folder (maintainers' diagnostic for docs/transfer.md).

Decodes the folder at each image size the way ``fspkd reproduce transfer`` does, runs the teacher in eval mode,
takes the pooled features that enter its classifier, and fits a logistic regression (L-BFGS, L2 penalty) on the
training images; prints its accuracy on the held-out images. It says how much the teacher's features alone know
about the new task at a given input size: the level a fine-tuned teacher should reach.

    python tools/probe_features.py --data imagefolder:../shared/data/hymenoptera.tar.gz \
        --teacher ../shared/weights/mobilenetv2-imagenet-features.pt --teacher-model mobilenetv2 --image-size 96 224
"""

import argparse
from pathlib import Path

import torch

from fspkd.data.normalize import IMAGENET
from fspkd.data.spec import load_dataset
from fspkd.training.inference import load_network


def pooled_features(net: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The inputs of ``net``'s classifier for uint8 ``images``, ImageNet-normalised."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    seen = []
    hook = getattr(net, net.head).register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].flatten(1)))
    with torch.no_grad():
        for start in range(0, len(images), batch):
            net((images[start:start + batch].float() / 255 - mean) / std)
    hook.remove()
    return torch.cat(seen)


def probe_accuracy(train_x, train_y, test_x, test_y, l2: float) -> tuple[float, float]:
    """Train and test accuracy (%) of a logistic regression on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(train_x.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(train_x), train_y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return tuple(float((linear(x).argmax(1) == y).float().mean()) * 100
                     for x, y in ((train_x, train_y), (test_x, test_y)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="imagefolder:PATH or cub200:PATH (with a held-out split)")
    parser.add_argument("--teacher", required=True, help="the teacher's weights (features only is enough)")
    parser.add_argument("--teacher-model", required=True, help="its architecture, e.g. mobilenetv2")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224], help="input sides to probe")
    parser.add_argument("--l2", type=float, default=0.01, help="L2 penalty of the probe's weights")
    args = parser.parse_args()
    torch.manual_seed(0)
    for size in args.image_size:
        splits = load_dataset(args.data, image_size=size)
        net, _ = load_network(Path(args.teacher), args.teacher_model, {}, len(splits.classes), features_only=True)
        train = pooled_features(net, splits.train.images)
        test = pooled_features(net, splits.test.images)
        train_acc, test_acc = probe_accuracy(train, splits.train.labels, test, splits.test.labels, args.l2)
        print(f"image size {size}: probe train {train_acc:.2f}%, held out {test_acc:.2f}% "
              f"({len(splits.train)} / {len(splits.test)} images)", flush=True)


if __name__ == "__main__":
    main()
