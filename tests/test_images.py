"""pipeline.images: odd images decode right, broken ones raise a typed error, preprocessing geometry."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline import images, resize
from pipeline.models.spec import BackboneSpec, WeightSource
from tests import image_zoo


def make_spec(input_size: int = 224, resize_size: int = 256, method: str = "bicubic") -> BackboneSpec:
    return BackboneSpec(name="test", family="test", config={}, input_size=input_size,
                        resize_size=resize_size, resize_method=method, normalization="mean_std",
                        feature_dim=8, feature_layer="pool",
                        weights=WeightSource("w", "pkg://none/w", "sha256:0", "pth", "none"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return image_zoo.write_zoo(tmp_path_factory.mktemp("zoo"), big=True)


@pytest.mark.parametrize("name", sorted(image_zoo.BROKEN))
def test_broken_files_raise_typed_error(zoo, name):
    with pytest.raises(images.ImageDecodeError) as info:
        images.decode_image(zoo[name])
    assert info.value.kind == image_zoo.BROKEN[name]
    assert info.value.path == str(zoo[name])
    assert info.value.reason  # a readable sentence for skipped.json


@pytest.mark.parametrize("name", sorted(image_zoo.GOOD))
def test_odd_images_decode_to_upright_rgb(zoo, name):
    img = images.decode_image(zoo[name])
    assert img.mode == "RGB"
    assert img.size == image_zoo.GOOD[name]
    # The same bytes from memory decode identically.
    again = images.decode_image(zoo[name].read_bytes(), name=name)
    assert np.array_equal(np.asarray(img), np.asarray(again))


def test_alpha_is_composited_on_white(zoo):
    a = np.asarray(images.decode_image(zoo["alpha.png"]))
    assert (a[:, :40] == 255).all()                       # transparent red -> white
    assert (a[:, 40:] == image_zoo.BLUE).all()
    p = np.asarray(images.decode_image(zoo["palette_alpha.png"]))
    assert (p[:32] == 255).all() and (p[32:] == image_zoo.GREEN).all()


def test_cmyk_colours(zoo):
    a = np.asarray(images.decode_image(zoo["cmyk.jpg"])).astype(int)
    # JPEG is lossy on flat colour only by a few levels; an uninverted Adobe CMYK would be cyan.
    assert np.abs(a - np.array(image_zoo.RED)).max() <= 8


def test_exif_orientation_applied(zoo):
    a = np.asarray(images.decode_image(zoo["exif_rotated.jpg"])).astype(int)
    assert a.shape == (120, 80, 3)
    top, bottom = a[10:50].mean((0, 1)), a[70:110].mean((0, 1))
    assert np.abs(top - image_zoo.RED).max() < 10
    assert np.abs(bottom - image_zoo.BLUE).max() < 10


def test_16_bit_scaled_not_clipped(zoo):
    a = np.asarray(images.decode_image(zoo["gray16.png"]))
    assert (a == 128).all()


def test_gif_first_frame(zoo):
    a = np.asarray(images.decode_image(zoo["animated.gif"])).astype(int)
    assert np.abs(a - image_zoo.GREEN).max() <= 4    # palette quantisation


def test_grayscale_becomes_three_equal_channels(zoo):
    a = np.asarray(images.decode_image(zoo["gray.jpg"]))
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_big_jpeg_draft_is_faster_and_close(zoo):
    spec = make_spec()
    t0 = time.perf_counter()
    full_img = images.decode_image(zoo["big.jpg"])
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    draft_img = images.decode_image(zoo["big.jpg"], min_size=spec.resize_size)
    t_draft = time.perf_counter() - t0
    assert full_img.size == (5000, 4000)
    assert draft_img.size == (1250, 1000)        # 1/4 scale keeps the shorter side >= 2 x 256
    assert t_draft < t_full
    full = resize.resize_and_crop(full_img, spec).astype(int)
    draft = resize.resize_and_crop(draft_img, spec).astype(int)
    diff = np.abs(full - draft)
    # Measured on photos upscaled to 5000x4000 with noise: mean 0.2-0.5 levels, max <= 5.
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_draft_not_used_when_it_would_go_below_the_margin():
    img = image_zoo.textured(600, 500)
    data = io.BytesIO(); img.save(data, "JPEG"); data = data.getvalue()
    # 500 // 2 = 250 < 2 x 224: decoding at half size would lose detail, so full size it is.
    assert images.decode_image(data, min_size=224).size == (600, 500)
    assert images.decode_image(data, min_size=100).size == (300, 250)


def test_max_pixels_and_truncated_guard(zoo, monkeypatch):
    with pytest.raises(images.ImageDecodeError) as info:
        images.decode_image(zoo["rgb.png"], max_pixels=100)
    assert info.value.kind == "too_large"
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        images.decode_image(zoo["rgb.png"])


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(images.ImageDecodeError) as info:
        images.decode_image(tmp_path / "nope.jpg")
    assert info.value.kind == "unreadable"


def test_resize_and_crop_geometry():
    spec = make_spec(input_size=224, resize_size=256)
    img = image_zoo.textured(300, 200)
    out = resize.resize_and_crop(img, spec)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Shorter side 200 -> 256, longer 300 -> int(256 * 300 / 200) = 384; centre crop at (80, 16).
    expect = np.asarray(img.resize((384, 256), Image.Resampling.BICUBIC).crop((80, 16, 304, 240)))
    assert np.array_equal(out, expect)
    portrait = resize.resize_and_crop(img.transpose(Image.Transpose.TRANSPOSE), spec)
    # PIL resizes rows then columns with a uint8 rounding in between, so a transposed image can
    # differ by a few levels; a crop off by one pixel would differ by tens (the noise texture).
    d = np.abs(portrait.astype(int) - out.transpose(1, 0, 2))
    assert d.mean() < 0.5 and d.max() <= 4


def test_views_flip_and_corner_crops():
    spec = make_spec(input_size=32, resize_size=40, method="bilinear")
    img = image_zoo.textured(50, 40)
    v = resize.views(img, spec, ("center", "top_left", "bottom_right"), flip=True)
    assert v.shape == (6, 32, 32, 3)
    assert np.array_equal(v[1], v[0][:, ::-1])
    assert np.array_equal(v[0], resize.resize_and_crop(img, spec))
    resized = np.asarray(img.resize((50, 40), Image.Resampling.BILINEAR))
    assert np.array_equal(v[2], resized[:32, :32]) and np.array_equal(v[4], resized[-32:, -32:])
