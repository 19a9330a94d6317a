"""Shared layers: the two depthwise implementations agree with each other and with numpy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.models import depthwise, layers


def _numpy_depthwise(x, kernel, stride, padding):
    """Direct definition: out[b,i,j,c] = sum_{u,v} xpad[b, i*s+u, j*s+v, c] * k[u,v,0,c]."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    k = kernel.shape[0]
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]  # (B, k, k, C)
            out[:, i, j, :] = np.einsum("buvc,uvc->bc", win, kernel[:, :, 0, :])
    return out


CASES = [
    # (H, W, kernel, stride, padding)
    (9, 9, 3, 1, ((1, 1), (1, 1))),          # PyTorch symmetric
    (9, 8, 3, 2, ((1, 1), (1, 1))),
    (10, 10, 3, 2, layers.same_padding_2d((10, 10), 3, 2)),  # TF SAME: ((0,1),(0,1))
    (11, 7, 5, 1, layers.same_padding_2d((11, 7), 5, 1)),
    (12, 12, 5, 2, layers.same_padding_2d((12, 12), 5, 2)),   # ((1,2),(1,2))
    (7, 7, 5, 2, ((0, 0), (0, 0))),          # no padding
]


@pytest.mark.parametrize("h,w,k,stride,padding", CASES)
def test_depthwise_impls_match_numpy(h, w, k, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, h, w, 6)).astype(np.float32)
    kern = rng.standard_normal((k, k, 1, 6)).astype(np.float32)
    want = _numpy_depthwise(x, kern, stride, padding)
    for impl in ("xla", "shifted"):
        got = np.asarray(depthwise.depthwise_conv(jnp.asarray(x), jnp.asarray(kern), stride, padding, impl))
        assert got.shape == want.shape, impl
        # float32 sums of <= 25 products of O(1) numbers: error ~1e-6.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=impl)


@pytest.mark.parametrize("h,w,k,stride,padding", [CASES[0], CASES[2], CASES[4]])
def test_depthwise_gradients_agree(h, w, k, stride, padding):
    """Input and kernel gradients of the shifted form (hand-written VJP) equal XLA autodiff's.
    The ideal/adversarial stages differentiate through this layer w.r.t. its input."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, h, w, 4)), jnp.float32)
    kern = jnp.asarray(rng.standard_normal((k, k, 1, 4)), jnp.float32)

    def grads(impl):
        loss = lambda v, kk: jnp.sum(jnp.sin(depthwise.depthwise_conv(v, kk, stride, padding, impl)))  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kern)

    (gx_x, gk_x), (gx_s, gk_s) = grads("xla"), grads("shifted")
    np.testing.assert_allclose(gx_s, gx_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk_s, gk_x, rtol=1e-4, atol=1e-4)  # sums over B*Ho*Wo terms


def test_depthwise_module_bf16_and_auto():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 5)), jnp.float32)
    outs = {}
    for impl in ("xla", "shifted", "auto"):
        mod = depthwise.DepthwiseConv(kernel_size=3, stride=2, depthwise=impl)
        params = mod.init(jax.random.PRNGKey(0), x)
        assert params["params"]["kernel"].shape == (3, 3, 1, 5)
        outs[impl] = mod.apply(params, x)
        bf = depthwise.DepthwiseConv(kernel_size=3, stride=2, depthwise=impl, dtype=jnp.bfloat16).apply(params, x)
        assert bf.dtype == jnp.bfloat16
        # bf16 has an 8-bit mantissa: relative error ~2^-8 per rounding.
        np.testing.assert_allclose(np.asarray(bf, np.float32), outs[impl], rtol=0.05, atol=0.05)
    assert outs["xla"].shape == (2, 4, 4, 5)
    np.testing.assert_allclose(outs["xla"], outs["shifted"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["auto"], outs["shifted"], rtol=1e-5, atol=1e-5)


def test_resolve_depthwise():
    assert depthwise.resolve_depthwise("auto") == ("shifted" if jax.default_backend() == "cpu" else "xla")
    assert depthwise.resolve_depthwise("xla") == "xla"
    with pytest.raises(ValueError, match="depthwise"):
        depthwise.resolve_depthwise("fast")


@pytest.mark.parametrize("size,k,s", list(itertools.product([224, 112, 7, 15], [1, 3, 5], [1, 2])))
def test_same_padding_output_size(size, k, s):
    lo, hi = layers.same_padding(size, k, s)
    assert (size + lo + hi - k) // s + 1 == -(-size // s)
    assert lo <= hi <= lo + 1


def test_fold_batchnorm_matches_conv_then_bn():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 6, 3)).astype(np.float32)
    kern = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2.0, 4).astype(np.float32)
    conv = lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = (np.asarray(conv(kern)) - mean) / np.sqrt(var + 1e-3) * gamma + beta
    fk, fb = layers.fold_batchnorm(kern, gamma, beta, mean, var, 1e-3)
    np.testing.assert_allclose(np.asarray(conv(fk)) + fb, want, rtol=1e-4, atol=1e-4)


def test_normalize_pixels():
    px = jnp.asarray([[[[0.0, 127.5, 255.0]]]])
    np.testing.assert_allclose(layers.normalize_pixels(px, "minus_one_one"), [[[[-1.0, 0.0, 1.0]]]])
    caffe = layers.normalize_pixels(px, "caffe")
    np.testing.assert_allclose(caffe, [[[[255.0 - 103.939, 127.5 - 116.779, 0.0 - 123.68]]]], rtol=1e-6)
    ms = layers.normalize_pixels(px, "mean_std")
    np.testing.assert_allclose(ms[0, 0, 0, 0], (0.0 - 0.485) / 0.229, rtol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        layers.normalize_pixels(px, "zscore")
