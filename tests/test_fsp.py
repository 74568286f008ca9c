import pytest
import torch
import torch.nn.functional as F

from fspkd.core.fsp import ChannelShuffle, fsp_loss, fsp_matrix, shuffle_fsp
from fspkd.core.fsp_kernels import window_max


def naive_fsp(a, b):
    batch, m, h, w = a.shape
    n = b.shape[1]
    out = torch.zeros(batch, m, n, dtype=torch.float64)
    for x in range(batch):
        for i in range(m):
            for j in range(n):
                for s in range(h):
                    for t in range(w):
                        out[x, i, j] += float(a[x, i, s, t]) * float(b[x, j, s, t])
    return out / (h * w)


def test_fsp_matrix_matches_the_loops_of_eq1():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    got = fsp_matrix(a, b)
    assert got.shape == (2, 3, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_fsp(a, b), rtol=1e-5, atol=1e-6)


def test_larger_map_is_max_pooled_to_the_smaller():
    torch.manual_seed(1)
    big, small = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)
    pooled = F.max_pool2d(big, 2)
    torch.testing.assert_close(fsp_matrix(big, small).double(), naive_fsp(pooled, small), rtol=1e-5, atol=1e-6)
    # the pooling applies whichever side is larger
    torch.testing.assert_close(
        fsp_matrix(small, big).double(), naive_fsp(small, pooled), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kernel", [(2, 2), (4, 2), (3, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_window_max_equals_max_pool2d(kernel, channels_last):
    x = torch.randn(3, 4, 12, 8)
    x[0, 0, :2, :2] = float("nan")  # propagated like max_pool2d
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(window_max(x, *kernel), F.max_pool2d(x, kernel, kernel), equal_nan=True,
                               rtol=0, atol=0)


def test_half_precision_inputs_give_float32():
    a = torch.randn(1, 2, 4, 4).half()
    assert fsp_matrix(a, a).dtype == torch.float32


@pytest.mark.parametrize(
    "shape_a, shape_b, words",
    [
        ((2, 3, 8, 8), (2, 3, 3, 3), "integer multiple"),
        ((2, 3, 8, 4), (2, 3, 4, 8), "neither contains"),
        ((2, 3, 4, 4), (3, 3, 4, 4), "batch size"),
        ((2, 3, 4), (2, 3, 4, 4), "4-D"),
    ],
)
def test_unmatchable_maps_raise_value_error(shape_a, shape_b, words):
    with pytest.raises(ValueError, match=words):
        fsp_matrix(torch.randn(*shape_a), torch.randn(*shape_b))


def test_fsp_loss_is_batch_mean_of_weighted_squared_frobenius_norms():
    torch.manual_seed(2)
    student = [torch.randn(4, 3, 5), torch.randn(4, 2, 2)]
    teacher = [torch.randn(4, 3, 5), torch.randn(4, 2, 2)]
    expected = 0.0
    for x in range(4):
        for lam, gs, gt in zip([0.5, 2.0], student, teacher):
            expected += lam * sum(float(v) ** 2 for v in (gt[x] - gs[x]).flatten())
    expected /= 4
    got = fsp_loss(student, teacher, weights=[0.5, 2.0])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert fsp_loss(student, teacher, weights=3.0).item() == pytest.approx(
        3 * fsp_loss(student, teacher).item(), rel=1e-6
    )


def test_only_the_student_receives_gradients():
    gs = torch.randn(2, 3, 3, requires_grad=True)
    gt = torch.randn(2, 3, 3, requires_grad=True)
    fsp_loss([gs], [gt]).backward()
    assert gs.grad is not None and gt.grad is None
    torch.testing.assert_close(gs.grad, 2 * (gs - gt).detach() / 2)


def test_mismatched_pairs_name_the_pair_and_both_shapes():
    with pytest.raises(ValueError, match=r"pair task.*\(2, 32, 32\).*\(2, 32, 64\).*channel widths"):
        fsp_loss({"task": torch.zeros(2, 32, 32)}, {"task": torch.zeros(2, 32, 64)})
    with pytest.raises(ValueError, match="2 student matrices and 1 teacher"):
        fsp_loss([torch.zeros(1, 2, 2)] * 2, [torch.zeros(1, 2, 2)])


def test_shuffle_permutes_rows_and_columns():
    g = torch.arange(12.0).reshape(1, 3, 4)
    rows, cols = torch.tensor([2, 0, 1]), torch.tensor([3, 2, 1, 0])
    out = shuffle_fsp(g, rows, cols)
    for i in range(3):
        for j in range(4):
            assert out[0, i, j] == g[0, rows[i], cols[j]]


def test_channel_shuffle_uses_one_permutation_per_layer_across_pairs():
    pairs = [("a", "b"), ("b", "c")]
    shuffle = ChannelShuffle(pairs, {"a": 3, "b": 4, "c": 5}, seed=7)
    g1, g2 = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    s1, s2 = shuffle([g1, g2])
    perm_b = shuffle.permutations["b"]
    torch.testing.assert_close(s1, g1[:, shuffle.permutations["a"]][:, :, perm_b])
    torch.testing.assert_close(s2, g2[:, perm_b][:, :, shuffle.permutations["c"]])
    same_seed = ChannelShuffle(pairs, {"a": 3, "b": 4, "c": 5}, seed=7)
    assert all(torch.equal(same_seed.permutations[k], shuffle.permutations[k]) for k in "abc")
    tied = ChannelShuffle(pairs, {"a": 4, "b": 4, "c": 5}, seed=7, groups={"a": "s", "b": "s"})
    assert torch.equal(tied.permutations["a"], tied.permutations["b"])


def reference_fsp_matrix(a, b):
    """Eq. 1 with autograd's own max_pool2d and bmm backward, the reference for fsp_matrix's gradients."""
    if a.shape[-1] > b.shape[-1]:
        a = F.max_pool2d(a, a.shape[-1] // b.shape[-1])
    elif b.shape[-1] > a.shape[-1]:
        b = F.max_pool2d(b, b.shape[-1] // a.shape[-1])
    batch, m, h, w = a.shape
    return torch.bmm(a.reshape(batch, m, h * w), b.reshape(batch, b.shape[1], h * w).transpose(1, 2)) / (h * w)


@pytest.mark.parametrize("shapes", [((2, 3, 8, 8), (2, 4, 8, 8)), ((2, 3, 8, 8), (2, 5, 4, 4)),
                                    ((2, 5, 2, 2), (2, 3, 8, 8))])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "relu_ties"])
def test_fsp_matrix_gradients_equal_autograd_of_bmm_and_max_pool2d(shapes, layout):
    torch.manual_seed(3)
    a, b = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    if layout == "relu_ties":  # ReLU outputs: windows full of equal zeros, and small integers tie too
        a, b = a.relu().round(), b.relu().round()
    if layout == "channels_last":
        a, b = (x.contiguous(memory_format=torch.channels_last) for x in (a, b))
    weight = torch.randn(shapes[0][0], shapes[0][1], shapes[1][1])
    grads = []
    for matrix_fn in (fsp_matrix, reference_fsp_matrix):
        leaves = [x.clone().requires_grad_(True) for x in (a, b)]
        (matrix_fn(*leaves) * weight).sum().backward()
        grads.append([x.grad for x in leaves])
    for x, ours, reference in zip((a, b), *grads):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
        assert ours.stride() == x.stride()  # each gradient in its map's layout: no copies when summed


def test_pooling_with_gradients_picks_max_pool2d_indices_on_ties_and_nan():
    x = torch.randint(0, 3, (2, 4, 8, 8)).float()  # many ties in every window
    x[0, 0, 0, 0] = x[1, 2, 5, 4] = x[1, 2, 4, 5] = float("nan")
    one_hot = torch.eye(16).reshape(1, 16, 4, 4).expand(2, 16, 4, 4)  # G[:, i, k] = pooled x[:, i] at position k
    upstream = torch.arange(2 * 4 * 16, dtype=torch.float32).reshape(2, 4, 16) + 1  # tells positions apart
    grads, outputs = [], []
    for matrix_fn in (fsp_matrix, reference_fsp_matrix):
        leaf = x.clone().requires_grad_(True)
        out = matrix_fn(leaf, one_hot)
        (out * upstream).sum().backward()
        outputs.append(out)
        grads.append(leaf.grad)
    torch.testing.assert_close(outputs[0], outputs[1], equal_nan=True)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_flow_product_passes_gradcheck():
    from fspkd.core.fsp_kernels import _FlowProduct

    a = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: _FlowProduct.apply(x, y, 5), (a, b))
