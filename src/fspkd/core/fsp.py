"""The FSP matrix (paper Eq. 1), the FSP loss (Eq. 2) and the channel shuffle of the shuffled-FSP student (the
paper's dagger rows).

All three are pure functions on tensors; which layers feed them is decided elsewhere (``fspkd.core.taps`` and each
model's ``fsp_pairs``). The CPU kernels that compute Eq. 1 fast are in ``fspkd.core.fsp_kernels``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fspkd.core.fsp_kernels import flow_product, max_pool

Matrices = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSP matrix of two feature maps of one network (paper Eq. 1).

    ``a`` is (B, m, h, w), ``b`` is (B, n, h', w'). Returns G of shape (B, m, n) with

        G[:, i, j] = sum over positions (s, t) of a[:, i, s, t] * b[:, j, s, t] / (h * w)

    computed in float32 whatever the input dtype (half-precision Gram sums overflow and lose digits). When the
    spatial sizes differ, the larger map is max-pooled down to the smaller, as the paper does.
    """
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"fsp_matrix needs 4-D feature maps (B, C, H, W), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"fsp_matrix needs the same batch size, got {a.shape[0]} and {b.shape[0]}")
    a, b = _match_spatial(a, b)
    batch, m, h, w = a.shape
    a = a.float().reshape(batch, m, h * w)
    b = b.float().reshape(batch, b.shape[1], h * w)
    with torch.autocast(a.device.type, enabled=False):  # autocast would run bmm in bf16 / fp16 again
        return flow_product(a, b, h * w)


def _match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger map max-pooled down to the smaller one's size."""
    size_a, size_b = tuple(a.shape[2:]), tuple(b.shape[2:])
    if size_a == size_b:
        return a, b
    if all(x >= y for x, y in zip(size_a, size_b)):
        return _pool_to(a, size_b, size_a, size_b), b
    if all(y >= x for x, y in zip(size_a, size_b)):
        return a, _pool_to(b, size_a, size_a, size_b)
    raise ValueError(f"fsp_matrix cannot match spatial sizes {size_a} and {size_b}: neither contains the other")


def _pool_to(x: torch.Tensor, target: tuple[int, int], size_a, size_b) -> torch.Tensor:
    height, width = x.shape[2:]
    if height % target[0] or width % target[1]:
        raise ValueError(f"fsp_matrix cannot max-pool {size_a} and {size_b} to one size: "
                         f"{(height, width)} is not an integer multiple of {target}")
    return max_pool(x, (height // target[0], width // target[1]))


def fsp_loss(
    student: Matrices,
    teacher: Matrices,
    weights: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """FSP loss (paper Eq. 2): the batch mean of sum_i lambda_i * ||G_i^T - G_i^S||_F^2.

    ``student`` and ``teacher`` hold one (B, m_i, n_i) FSP matrix per layer pair, as sequences in the same order
    or as mappings with the same keys. The norm is the squared Frobenius norm, a *sum* over all m*n entries (not a
    mean); ``weights`` is one lambda for every pair (the paper: all terms equally important; default 1) or one
    per pair. The teacher side is detached: it never receives gradients.
    """
    names, pairs = _pair_up(student, teacher)
    lambdas = _lambdas(weights, len(pairs))
    total = None
    for name, (g_student, g_teacher), lam in zip(names, pairs, lambdas):
        if g_student.shape != g_teacher.shape:
            raise ValueError(
                f"FSP pair {name}: student matrix {tuple(g_student.shape)} and teacher matrix "
                f"{tuple(g_teacher.shape)} differ; teacher and student need the same channel widths at both "
                "ends of every pair"
            )
        diff = g_student.float() - g_teacher.detach().float()
        term = lam * diff.pow(2).sum(dim=(1, 2)).mean()
        total = term if total is None else total + term
    return total


def _pair_up(student: Matrices, teacher: Matrices):
    if isinstance(student, Mapping) != isinstance(teacher, Mapping):
        raise TypeError("fsp_loss needs both sides as sequences or both as mappings")
    if isinstance(student, Mapping):
        if set(student) != set(teacher):
            raise ValueError(f"FSP pairs differ: student has {sorted(student)}, teacher has {sorted(teacher)}")
        names = list(student)
        return names, [(student[k], teacher[k]) for k in names]
    if len(student) != len(teacher):
        raise ValueError(f"fsp_loss got {len(student)} student matrices and {len(teacher)} teacher matrices")
    if not student:
        raise ValueError("fsp_loss needs at least one pair of FSP matrices")
    return [str(i) for i in range(len(student))], list(zip(student, teacher))


def _lambdas(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if isinstance(weights, (int, float)):
        return [float(weights)] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"fsp_loss got {len(weights)} weights for {count} pairs")
    return weights


def channel_permutations(channels: Mapping[str, int], seed: int) -> dict[str, torch.Tensor]:
    """One seeded random permutation per tapped layer (name -> LongTensor of its channel count)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(count, generator=generator) for name, count in sorted(channels.items())}


def shuffle_fsp(
    matrix: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None
) -> torch.Tensor:
    """FSP matrix of an equivalent network whose two tapped layers had their channels permuted.

    If layer 1's channels are reordered so that new channel k is old channel ``rows[k]`` (and likewise ``cols``
    for layer 2), the new FSP matrix is ``G[:, rows][:, :, cols]``. ``None`` leaves that side as it is (a layer
    that cannot be permuted, such as the network input).
    """
    if rows is not None:
        matrix = matrix.index_select(-2, rows.to(matrix.device))
    if cols is not None:
        matrix = matrix.index_select(-1, cols.to(matrix.device))
    return matrix


class ChannelShuffle:
    """The paper's shuffled-FSP targets: one permutation per tapped layer, applied consistently to every pair.

    ``pairs`` are (first tap, second tap) names and ``channels`` maps each tap name to its channel count. A tap
    named in two pairs gets one permutation, used in both. ``groups`` (tap name -> group name) ties taps that
    must share a permutation, such as two taps of one residual stream, where permuting one layer alone would not
    give an equivalent network.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        channels: Mapping[str, int],
        seed: int,
        groups: Mapping[str, str] | None = None,
    ):
        self.pairs = [tuple(p) for p in pairs]
        self.groups = {tap: (groups or {}).get(tap, tap) for tap in channels}
        group_channels = {}
        for tap, group in self.groups.items():
            if group_channels.setdefault(group, channels[tap]) != channels[tap]:
                raise ValueError(f"taps of permutation group {group!r} have different channel counts")
        group_perms = channel_permutations(group_channels, seed)
        self.permutations = {tap: group_perms[group] for tap, group in self.groups.items()}

    def __call__(self, matrices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [
            shuffle_fsp(g, self.permutations.get(first), self.permutations.get(second))
            for g, (first, second) in zip(matrices, self.pairs)
        ]
