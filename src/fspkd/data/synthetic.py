"""A procedurally generated 10-class 32x32 RGB data set: no download, deterministic, vectorised.

Each image shows one shape or texture (the class) at a random position, size, slight rotation and colour
(sometimes of low contrast), over a gradient background with a blotchy colour texture and thin line
segments as clutter, plus pixel noise: hard enough that a deeper network beats a shallower one after a few
hundred iterations, so a teacher/student gap shows.
"""

from __future__ import annotations

import math

import torch

from fspkd.data.sets import DecodedDataset, ImageSet

CLASSES = ["disc", "ring", "square", "frame", "plus", "cross", "hstripes", "vstripes", "triangle", "checker"]
SIDE = 32
DATA_SEED = 20170721  # fixed: the synthetic set is the same data in every run
DEFAULT_TRAIN, DEFAULT_TEST = 10_000, 2_000

# Difficulty knobs.
NOISE_STD = 0.16
MIN_CONTRAST, MAX_CONTRAST = 0.12, 0.7
NUM_SEGMENTS = 3
BLOTCH_GRID, BLOTCH_WEIGHT = 6, 0.3


def make_synthetic(num_train: int = DEFAULT_TRAIN, num_test: int = DEFAULT_TEST) -> DecodedDataset:
    """The synthetic data set with `num_train` training and `num_test` test images (classes balanced)."""
    train = generate(num_train, DATA_SEED)
    test = generate(num_test, DATA_SEED + 1) if num_test else None
    return DecodedDataset(train, test, list(CLASSES))


def generate(count: int, seed: int) -> ImageSet:
    """`count` images with balanced, shuffled labels, fully determined by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(CLASSES))[torch.randperm(count, generator=generator)]
    canvas = _background(count, generator)
    canvas = _draw_clutter(canvas, generator)
    canvas = _draw_shapes(canvas, labels, generator)
    canvas.add_(torch.randn(canvas.shape, generator=generator), alpha=NOISE_STD)
    images = canvas.mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8)  # +0.5 then truncate = round
    return ImageSet(images, labels.to(torch.int64))


def _uniform(shape, low, high, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates, each (1, SIDE, SIDE)."""
    coords = torch.arange(SIDE, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return ys[None], xs[None]


def _background(count: int, generator) -> torch.Tensor:
    """A random base colour with a random linear gradient, (count, 3, SIDE, SIDE)."""
    base = _uniform((count, 3, 1, 1), 0.15, 0.85, generator)
    slope = _uniform((count, 3, 2, 1, 1), -0.25, 0.25, generator)
    ys, xs = _grid()
    ramp_y, ramp_x = (ys / SIDE - 0.5)[None], (xs / SIDE - 0.5)[None]
    return (slope[:, :, 0] * ramp_y).add_(slope[:, :, 1] * ramp_x).add_(base)


def _blend(canvas: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Paint `colour` (N, 3, 1, 1) onto `canvas` with coverage `alpha` (N, SIDE, SIDE)."""
    return canvas.lerp_(colour.expand_as(canvas), alpha[:, None].expand_as(canvas))


def _coverage(distance: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return (0.5 - distance).clamp(0, 1)


def _random_colour_near(canvas: torch.Tensor, generator) -> torch.Tensor:
    """Colours differing from each image's mean colour by a random, sometimes small, contrast."""
    count = canvas.shape[0]
    direction = torch.randn((count, 3, 1, 1), generator=generator)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    contrast = _uniform((count, 1, 1, 1), MIN_CONTRAST, MAX_CONTRAST, generator)
    mean = canvas.mean(dim=(2, 3), keepdim=True)
    return (mean + contrast * math.sqrt(3) * direction).clamp(0, 1)


def _draw_clutter(canvas: torch.Tensor, generator) -> torch.Tensor:
    """A blotchy low-resolution colour texture and thin random line segments in random colours."""
    count = canvas.shape[0]
    blotches = _uniform((count, 3, BLOTCH_GRID, BLOTCH_GRID), 0, 1, generator)
    upsample = _linear_upsampling(BLOTCH_GRID, SIDE)
    canvas.lerp_(upsample @ blotches @ upsample.T, BLOTCH_WEIGHT)  # bilinear, but as matmuls: much faster
    coords = torch.arange(SIDE, dtype=torch.float32) + 0.5
    for _ in range(NUM_SEGMENTS):
        start = _uniform((count, 2), 0, SIDE, generator)
        angle = _uniform((count, 1), 0, math.pi, generator)
        half_length = _uniform((count, 1, 1), 2, 7, generator)
        cos, sin = torch.cos(angle), torch.sin(angle)
        x_offset, y_offset = coords - start[:, 1:], coords - start[:, :1]  # (count, SIDE) each
        # Coordinates along / across the segment are separable sums of an x term and a y term.
        along = (cos * x_offset)[:, None, :] + (sin * y_offset)[:, :, None]
        across = (cos * y_offset)[:, :, None] - (sin * x_offset)[:, None, :]
        distance = torch.maximum(across.abs_() - 0.6, (along - half_length).abs_() - half_length)
        canvas = _blend(canvas, _coverage(distance), _uniform((count, 3, 1, 1), 0, 1, generator))
    return canvas


def _linear_upsampling(source: int, target: int) -> torch.Tensor:
    """The (target, source) matrix of 1-D linear interpolation with edge clamping (half-pixel centres)."""
    position = ((torch.arange(target) + 0.5) * source / target - 0.5).clamp(0, source - 1)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=source - 1)
    weight_upper = position - lower
    matrix = torch.zeros(target, source)
    matrix[torch.arange(target), lower] += 1 - weight_upper
    matrix[torch.arange(target), upper] += weight_upper
    return matrix


def _draw_shapes(canvas: torch.Tensor, labels: torch.Tensor, generator) -> torch.Tensor:
    """Paint each image's class shape at a random place, size, small rotation and colour."""
    count = canvas.shape[0]
    centre = _uniform((count, 2, 1, 1), 10, SIDE - 10, generator)
    size = _uniform((count, 1, 1), 5, 10, generator)
    angle = _uniform((count, 1, 1), -0.35, 0.35, generator)
    frequency = _uniform((count, 1, 1), 0.75, 1.1, generator)  # stripe/checker frequency, rad per pixel
    colour = _random_colour_near(canvas, generator)
    ys, xs = _grid()
    dy, dx = ys - centre[:, 0], xs - centre[:, 1]
    u = dx * torch.cos(angle) + dy * torch.sin(angle)  # shape-frame coordinates
    v = -dx * torch.sin(angle) + dy * torch.cos(angle)
    distance = torch.empty_like(u)
    for label, signed_distance in enumerate(_SHAPES):
        chosen = labels == label
        distance[chosen] = signed_distance(u[chosen], v[chosen], size[chosen], frequency[chosen])
    return _blend(canvas, _coverage(distance), colour)


def _box(u, v, half):
    return torch.maximum(u.abs(), v.abs()) - half


def _bar_cross(u, v, r):
    horizontal = torch.maximum(u.abs() - r, v.abs() - 0.28 * r)
    vertical = torch.maximum(v.abs() - r, u.abs() - 0.28 * r)
    return torch.minimum(horizontal, vertical)


def _triangle(u, v, r):
    """Signed distance (approximate) of an upward equilateral triangle with circumradius r."""
    k = math.sqrt(3)
    edges = [v - 0.5 * r, (-k * u - v) / 2 - 0.5 * r, (k * u - v) / 2 - 0.5 * r]
    return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])


def _stripes(phase, region, width=0.5):
    """Inside `region`, keep only alternate bands of `phase` (radians); distance in pixels, roughly."""
    band = (torch.sin(phase) - (width - 0.5)) * -2
    return torch.maximum(region, band)


_SHAPES = [
    lambda u, v, r, f: (u**2 + v**2).sqrt() - r,                                   # disc
    lambda u, v, r, f: ((u**2 + v**2).sqrt() - 0.7 * r).abs() - 0.22 * r,          # ring
    lambda u, v, r, f: _box(u, v, 0.8 * r),                                         # square
    lambda u, v, r, f: (_box(u, v, 0.78 * r)).abs() - 0.2 * r,                      # frame
    lambda u, v, r, f: _bar_cross(u, v, r),                                         # plus
    lambda u, v, r, f: _bar_cross((u + v) / math.sqrt(2), (v - u) / math.sqrt(2), r),  # cross (x)
    lambda u, v, r, f: _stripes(v * f, _box(u, v, r)),                              # horizontal stripes
    lambda u, v, r, f: _stripes(u * f, _box(u, v, r)),                              # vertical stripes
    lambda u, v, r, f: _triangle(u, v, 1.15 * r),                                   # triangle
    lambda u, v, r, f: _stripes(torch.sign(torch.sin(u * f) * torch.sin(v * f)), _box(u, v, r)),  # checker
]
