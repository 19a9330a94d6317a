"""Keras Applications backbones (VGG16/19, ResNet50, MobileNetV2): parity with Keras 3 itself.

Each parity test builds the real ``keras.applications`` model with seeded random weights (random
BatchNorm statistics and biases too, so folding is exercised), writes them to an ``.h5`` file in
the legacy layout of the published Keras Applications files, reads that file back through
`keras_h5.read_keras_h5` + the family's `convert`, and compares our Flax features and ImageNet
logits with Keras's on the same pixels, each side using its own preprocessing.

The file layouts mirror the published files: the VGG files date from Keras 1 (weight names like
``block1_conv1_W_1:0``), the ResNet50 and MobileNetV2 files from Keras 2 (``conv1_conv/kernel:0``,
``depthwise_kernel``, heads named ``probs`` / ``Logits``); one file is written by Keras 3's own
legacy writer. No weights are downloaded.

Keras backend: ``numpy`` unless KERAS_BACKEND is already set (``KERAS_BACKEND=jax pytest ...``
runs the same tests on the JAX backend; both pass). Why not JAX by default: on the JAX backend
every weight initializer is a separately compiled XLA program per shape, which costs 12-14 s per
model on this 2-core machine before any comparison runs (measured: ResNet50 12.5 s, MobileNetV2
13.6 s); the numpy backend builds the same Keras layer graph in 0.2-0.5 s and still runs its
convolutions through ``jax.lax.conv_general_dilated``. What is under test is Keras's architecture
(padding, strides, layer order, BN formula, flatten order), which is the same on every backend.
The variable is set only while keras is first imported, so other tests see the environment as is.

Smaller inputs than 224 keep this file fast: the conv trunks work at any size >= 32, and VGG's fc
head is built for the test spec's size (fc1 reads a 2x2x512 map at 64, which still checks the
HWC flatten order). 72 for MobileNetV2 makes the stride-2 inputs 36, 18 (even) and 9, 5 (odd), so
both branches of Keras's ``correct_pad`` are exercised. One test runs the registered 224 spec
end to end through `registry.load_backbone`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import h5py
import numpy as np
import pytest

from pipeline.models import converted, keras_h5, mobilenet_v2, registry, resnet, vgg
from pipeline.models.convert import ConversionError
from pipeline.models.keras_h5 import KerasWeightsError

# Tolerance, relative to the largest |reference| value: float32 accumulation order differs between
# XLA's convolutions and Keras's (numpy matmul for Dense), and BatchNorm folding reassociates the
# arithmetic; measured worst case is ~1e-6 of the output scale for all four models. 1e-4 leaves
# 100x headroom, while any real mistake (a padding off by one, a swapped layer, a transposed
# kernel, BGR/RGB) changes outputs at O(1) relative.
REL_TOL = 1e-4
BATCH = 2

# Keras's numpy backend converts variables with np.array(x) (numpy 2 deprecation noise, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    """Keras 3, imported with KERAS_BACKEND=numpy unless the caller chose a backend (see docstring)."""
    if "keras" not in sys.modules:
        prev = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = prev or "numpy"
        try:
            importlib.import_module("keras")
        finally:
            if prev is None:
                del os.environ["KERAS_BACKEND"]
    keras_mod = pytest.importorskip("keras")
    if int(keras_mod.__version__.split(".")[0]) < 3:
        pytest.skip(f"needs Keras 3, found {keras_mod.__version__}")
    return keras_mod


def randomize(model, seed: int) -> None:
    """Seeded weights with realistic scales: He-normal kernels, non-trivial biases and BN stats."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape, role = tuple(w.shape), w.path.split("/")[-1]
        if role in ("kernel", "depthwise_kernel"):
            fan_in = np.prod(shape[:-1]) if len(shape) != 4 or shape[-1] != 1 else np.prod(shape[:2])
            v = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif role in ("gamma", "moving_variance"):
            v = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:  # bias, beta, moving_mean
            v = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        values.append(v)
    model.set_weights(values)


def write_legacy_h5(path, model, style: str, renames: dict | None = None) -> None:
    """Write `model`'s weights in the legacy Keras HDF5 layout of the published files.

    Args:
      path: file to write.
      model: a built Keras 3 model.
      style: ``keras3`` (Keras 3's own legacy writer), ``keras2`` (``<layer>/<role>:0`` names,
        ``depthwise_kernel``) or ``keras1`` (``<layer>_W_1:0`` / ``<layer>_b_1:0``).
      renames: ``{current layer name: name written to the file}``.
    """
    if style == "keras3":
        from keras.src.legacy.saving import legacy_h5_format

        assert not renames
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        return
    renames = renames or {}
    keras1 = {"kernel": "W", "bias": "b"}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [renames.get(l.name, l.name).encode() for l in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"1.2.2" if style == "keras1" else b"2.2.4"
        for layer in model.layers:
            name = renames.get(layer.name, layer.name)
            group = f.create_group(name)
            names = []
            for w in layer.trainable_weights + layer.non_trainable_weights:  # Keras's load order
                role = w.path.split("/")[-1]
                if style == "keras1":
                    wname = f"{name}_{keras1[role]}_1:0"
                else:
                    if role == "kernel" and type(layer).__name__ == "DepthwiseConv2D":
                        role = "depthwise_kernel"  # Keras 2's name for it
                    wname = f"{name}/{role}:0"
                group.create_dataset(wname, data=np.asarray(w.numpy()))
                names.append(wname.encode())
            group.attrs["weight_names"] = names


@dataclasses.dataclass
class Case:
    spec: object
    family: object
    model: object  # Keras model: input -> (features, logits)
    keras_names: list
    preprocess: object
    h5: object


def make_case(keras, tmp_path_factory, name: str, size: int, style: str, renames=None) -> Case:
    spec = dataclasses.replace(registry.get_spec(name), input_size=size)
    apps = keras.applications
    builders = {
        "vgg16": (apps.VGG16, "fc2", apps.vgg16.preprocess_input),
        "vgg19": (apps.VGG19, "fc2", apps.vgg19.preprocess_input),
        "resnet50": (apps.ResNet50, "avg_pool", apps.resnet50.preprocess_input),
        "mobilenet_v2": (apps.MobileNetV2, None, apps.mobilenet_v2.preprocess_input),
    }
    build, feat_layer, preprocess = builders[name]
    km = build(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    randomize(km, seed=sum(map(ord, name)))
    feats = km.get_layer(feat_layer).output if feat_layer else km.layers[-2].output  # MNv2: unnamed GAP
    path = tmp_path_factory.mktemp(name) / f"{name}.h5"
    write_legacy_h5(path, km, style, renames)
    return Case(spec, registry.family_module(spec), keras.Model(km.inputs, [feats, km.output]),
                [l.name for l in km.layers if l.weights], preprocess, path)


@pytest.fixture(scope="module")
def cases(keras, tmp_path_factory):
    """Built lazily, once per module: name -> Case."""
    made: dict[str, Case] = {}
    plans = {
        # Published VGG files: Keras-1 weight names.
        "vgg16": dict(size=64, style="keras1"),
        # Keras 3's own legacy writer. 32 (a 1x1 map before fc1) keeps it cheap; vgg16 at 64
        # covers the flatten order.
        "vgg19": dict(size=32, style="keras3"),
        # Published ResNet50 file: Keras 2 names, head "probs" (keras_applications resnet_common).
        "resnet50": dict(size=64, style="keras2", renames={"predictions": "probs"}),
        # Published MobileNetV2 files: Keras 2 names, head "Logits".
        "mobilenet_v2": dict(size=72, style="keras2", renames={"predictions": "Logits"}),
    }

    def get(name: str) -> Case:
        if name not in made:
            made[name] = make_case(keras, tmp_path_factory, name, **plans[name])
        return made[name]

    return get


def flax_forward(case: Case, params: dict, pixels: np.ndarray, depthwise: str = "xla"):
    """Our side: normalise (the spec's normalisation), features, then the ImageNet head."""
    import jax
    import jax.numpy as jnp

    from pipeline.models.layers import normalize_pixels

    module = case.family.build(case.spec, "float32", depthwise)

    @jax.jit
    def run(p, x):
        f = module.apply({"params": p["features"]}, normalize_pixels(x, case.spec.normalization))
        return f, f @ p["head"]["kernel"] + p["head"]["bias"]

    return tuple(np.asarray(a) for a in run(params, jnp.asarray(pixels)))


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs Keras {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0, f"{what}: Keras output is all zeros; the test would prove nothing"
    np.testing.assert_allclose(ours, ref, rtol=REL_TOL, atol=REL_TOL * scale, err_msg=what)


def pixels_for(case: Case, seed: int = 0) -> np.ndarray:
    s = case.spec.input_size
    return np.random.default_rng(seed).uniform(0, 255, (BATCH, s, s, 3)).astype(np.float32)


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet50", "mobilenet_v2"])
def test_parity_with_keras(cases, name):
    import jax

    case = cases(name)
    params = case.family.convert(case.family.load_state(case.h5, case.spec), case.spec)
    pixels = pixels_for(case)
    with jax.default_matmul_precision("highest"):
        k_feats, k_logits = case.model.predict(case.preprocess(pixels.copy()), verbose=0)
        depthwise_impls = ["xla", "shifted"] if name == "mobilenet_v2" else ["xla"]
        for impl in depthwise_impls:
            feats, logits = flax_forward(case, params, pixels, impl)
            assert_close(feats, k_feats, f"{name} features (depthwise={impl})")
            assert_close(logits, k_logits, f"{name} logits (depthwise={impl})")
    assert feats.shape == (BATCH, case.spec.feature_dim)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenet_v2"])
def test_keras_layer_order(cases, name):
    """Our idea of the file's layer order (used when names differ) is Keras's model.layers order."""
    case = cases(name)
    assert case.family.keras_layers(case.spec) == case.keras_names


def test_layers_paired_by_position_when_names_differ(cases, tmp_path):
    """A file whose layers all have other names converts exactly like the canonical one (as Keras,
    which loads these files by layer order)."""
    import jax

    case = cases("mobilenet_v2")
    state = keras_h5.read_keras_h5(case.h5)
    order = keras_h5.layer_names(state)  # file order
    renamed = {}
    for key, value in state.items():
        layer, _, role = key.partition("/")
        renamed[f"mobl{order.index(layer)}_conv/{role}"] = value  # another converter's naming
    want = case.family.convert(state, case.spec)
    got = case.family.convert(renamed, case.spec)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


def test_registry_end_to_end_224(cases, keras, tmp_path):
    """The registered mobilenet_v2 spec at 224 through `registry.load_backbone` (converted params
    placed in the cache as load_backbone would have written them; nothing is downloaded)."""
    import jax

    spec = registry.get_spec("mobilenet_v2")
    km = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    randomize(km, seed=7)
    path = tmp_path / "w.h5"
    write_legacy_h5(path, km, "keras2", {"predictions": "Logits"})
    family = registry.family_module(spec)
    params = family.convert(family.load_state(path, spec), spec)
    converted.save(converted.converted_path(spec, tmp_path, family.CONVERT_VERSION), params, spec)

    backbone = registry.load_backbone("mobilenet_v2", tmp_path, depthwise="auto")
    pixels = np.random.default_rng(1).uniform(0, 255, (BATCH, 224, 224, 3)).astype(np.float32)
    ref = keras.Model(km.inputs, [km.layers[-2].output, km.output])
    with jax.default_matmul_precision("highest"):
        k_feats, k_logits = ref.predict(keras.applications.mobilenet_v2.preprocess_input(pixels.copy()),
                                        verbose=0)
        feats = np.asarray(backbone.embed(backbone.params, pixels))
        logits = np.asarray(backbone.imagenet_logits(backbone.params, feats))
    assert_close(feats, k_feats, "registry mobilenet_v2 features")
    assert_close(logits, k_logits, "registry mobilenet_v2 logits")


# ---------------------------------------------------------------------------------------------
# Converter and reader errors


@pytest.fixture
def mnv2_state(cases):
    case = cases("mobilenet_v2")
    return case, keras_h5.read_keras_h5(case.h5)


def test_converter_rejects_missing_key(mnv2_state):
    case, state = mnv2_state
    del state["block_5_project_BN/moving_variance"]
    with pytest.raises(ConversionError, match=r"block_5_project_BN/moving_variance.*missing"):
        case.family.convert(state, case.spec)


def test_converter_rejects_wrong_shape(mnv2_state):
    case, state = mnv2_state
    state["block_3_expand/kernel"] = state["block_3_expand/kernel"][..., :-1]
    with pytest.raises(ConversionError, match=r"block_3_expand/kernel.*shape \(1, 1, 24, 143\).*expects \(1, 1, 24, 144\)"):
        case.family.convert(state, case.spec)


def test_converter_rejects_leftover_key(mnv2_state):
    case, state = mnv2_state
    state["Conv1/bias"] = np.zeros(32, np.float32)  # Keras's Conv1 has no bias: must not be dropped
    with pytest.raises(ConversionError, match=r"not used.*Conv1/bias"):
        case.family.convert(state, case.spec)


def test_converter_rejects_other_architecture(cases):
    """A ResNet50 file given to VGG16: layer counts differ, the message says so."""
    case = cases("resnet50")
    state = keras_h5.read_keras_h5(case.h5)
    spec = dataclasses.replace(registry.get_spec("vgg16"), input_size=64)
    with pytest.raises(KerasWeightsError, match=r"107 layers with weights, this architecture has 16"):
        vgg.convert(state, spec)


def test_reader_rejects_truncated_file(mnv2_state, tmp_path):
    case, _ = mnv2_state
    data = case.h5.read_bytes()
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(KerasWeightsError, match=r"truncated\.h5.*delete it and rerun"):
        keras_h5.read_keras_h5(bad)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(KerasWeightsError, match=r"junk\.h5.*delete it and rerun"):
        keras_h5.read_keras_h5(junk)


def test_reader_rejects_non_keras_h5(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(KerasWeightsError, match=r"plain\.h5: not a Keras HDF5 weights file"):
        keras_h5.read_keras_h5(path)


def test_reader_handles_model_weights_group_and_chunked_names(tmp_path):
    """Whole-model saves put the layout under /model_weights; Keras splits long name lists into
    layer_names0, layer_names1, ... attributes."""
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names0"] = [b"input_1", b"dense"]
        g.attrs["layer_names1"] = [b"bn"]
        g.create_group("input_1").attrs["weight_names"] = []
        d = g.create_group("dense")
        d.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        d["dense/kernel:0"] = np.ones((2, 3), np.float32)
        d["dense/bias:0"] = np.zeros(3, np.float32)
        b = g.create_group("bn")
        b.attrs["weight_names"] = [b"bn_gamma_1:0", b"bn_running_std_1:0"]  # Keras 1 BatchNorm
        b["bn_gamma_1:0"] = np.ones(3, np.float32)
        b["bn_running_std_1:0"] = np.full(3, 2.0, np.float32)
    state = keras_h5.read_keras_h5(path)
    assert list(state) == ["dense/kernel", "dense/bias", "bn/gamma", "bn/moving_variance"]
    assert state["dense/kernel"].shape == (2, 3)
    assert state["bn/moving_variance"].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("stored, role", [
    ("block1_conv1_W_1:0", "kernel"), ("fc1_b_1:0", "bias"), ("conv1_conv/kernel:0", "kernel"),
    ("resnet50/conv1_bn/moving_variance:0", "moving_variance"), ("block1_conv1/bias", "bias"),
    ("block_1_depthwise/depthwise_kernel:0", "depthwise_kernel"), ("bn_running_mean_2:0", "moving_mean"),
])
def test_canonical_role(stored, role):
    assert keras_h5.canonical_role(stored, "layer") == role


def test_canonical_role_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"'weird:0' is not a known Keras weight name"):
        keras_h5.canonical_role("weird:0", "layer")


# ---------------------------------------------------------------------------------------------
# Specs (no Keras needed)


@pytest.mark.parametrize("name, family", [("vgg16", vgg), ("vgg19", vgg), ("resnet50", resnet),
                                          ("mobilenet_v2", mobilenet_v2)])
def test_spec_numbers_match_architecture(name, family):
    import jax

    spec = registry.get_spec(name)
    assert registry.family_module(spec) is family
    shapes = family.param_shapes(spec)
    n = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
    assert spec.extra["params"] == n
    assert spec.flops == pytest.approx(family.flops_per_image(spec), rel=1e-4)
    out = jax.eval_shape(lambda: family.build(spec).init_with_output(
        jax.random.key(0), np.zeros((1, spec.input_size, spec.input_size, 3), np.float32))[0])
    assert out.shape == (1, spec.feature_dim)
    assert spec.weights.url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
    assert spec.weights.url.endswith("/" + spec.weights.filename)
    # Keras publishes MD5s, except for MobileNetV2 (none at all: pinned on first download).
    assert spec.weights.format == "h5"
    if spec.name == "mobilenet_v2":
        assert spec.weights.checksum is None and spec.weights.size == 14_536_120
    else:
        assert spec.weights.checksum.startswith("md5:")
