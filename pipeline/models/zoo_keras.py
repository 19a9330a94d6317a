"""Keras Applications backbone specs: VGG16, VGG19, ResNet50, MobileNetV2 (data only; no jax).

Weights are the published Keras Applications ImageNet files "with top" (the ImageNet head is
needed for the ideal/adversarial stages), at the URLs Keras 3 downloads them from
(``keras/src/applications/{vgg16,vgg19,resnet,mobilenet_v2}.py``). Checksums are the MD5s Keras
itself verifies (``file_hash=`` in those files); sizes are the Content-Length the server reports.
Keras publishes no hash for the MobileNetV2 files (it calls ``get_file`` without ``file_hash``);
its first download is pinned (trust on first use, see `pipeline.models.weights`).

Preprocessing: shorter side to 256, centre crop 224, bilinear. Keras's own image utilities
(``keras.layers.Resizing``, ``image_dataset_from_directory``, ``smart_resize``) resize bilinearly
by default, the Caffe models behind VGG and ResNet50 were evaluated on bilinear resizes (256 then
224 crops), and TF-slim's evaluation of MobileNetV2 resizes bilinearly after a 0.875 central
crop (= 224/256). Normalisation is what each ``keras.applications.<model>.preprocess_input`` does:
"caffe" (RGB->BGR, minus the ImageNet BGR mean, no scaling) for VGG and ResNet50, "tf"
(x / 127.5 - 1) for MobileNetV2.

Licences (of the weights; the Keras code is Apache-2.0): VGG16/19 were ported from the Oxford VGG
Caffe release, licensed CC BY 4.0; ResNet50 from Kaiming He's Caffe release
(KaimingHe/deep-residual-networks, MIT); MobileNetV2 from the TF-slim checkpoints in
tensorflow/models (Apache-2.0), converted by J. Mitchell (mobilenet_v2_keras, MIT).

``flops`` are the families' `flops_per_image` (multiply-adds x 2 at 224; a test keeps them in
step); ``extra["params"]`` counts feature-extractor parameters after BatchNorm folding, head
excluded; ``extra["keras_top1"]`` is Keras Applications' published single-crop ImageNet top-1 (%).
"""

from __future__ import annotations

from pipeline.models.spec import BackboneSpec, WeightSource

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"

# Keras ships no hash for the MobileNetV2 files and none could be obtained here (no network to
# storage.googleapis.com). The size (14536120 bytes, from Keras download logs) is checked, and the
# first download's sha256 is pinned beside the file (trust on first use, as Keras itself trusts
# it); put the published digest in the spec if one ever appears.

_VGG_LICENCE = "CC BY 4.0 (Oxford VGG Caffe weights, ported by Keras Applications)"
_RESNET_LICENCE = "MIT (Kaiming He's Caffe ResNet-50 weights, ported by Keras Applications)"
_MOBILENET_LICENCE = ("Apache-2.0 (TF-slim MobileNetV2 checkpoints, tensorflow/models; converted "
                      "to Keras by J. Mitchell, MIT)")

_COMMON = dict(input_size=224, resize_size=256, resize_method="bilinear", num_classes=1000)

SPECS = [
    BackboneSpec(
        name="vgg16",
        family="vgg",
        any_input_size=False,  # fc1 reads the (S/32)^2 x 512 map of a 224 input
        config={"blocks": (2, 2, 3, 3, 3)},
        normalization="caffe",
        feature_dim=4096,
        feature_layer="fc2 after ReLU (4096); the ImageNet head 'predictions' reads it",
        weights=WeightSource(
            filename="vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            url=f"{BASE_URL}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            checksum="md5:64373286793e3c8b2b4e3219cbf3544b",
            format="h5",
            licence=_VGG_LICENCE,
            size=553_467_096,
        ),
        flops=3.0941e10,
        extra={"params": 134_260_544, "keras_top1": 71.268},
        **_COMMON,
    ),
    BackboneSpec(
        name="vgg19",
        family="vgg",
        any_input_size=False,  # fc1 reads the (S/32)^2 x 512 map of a 224 input
        config={"blocks": (2, 2, 4, 4, 4)},
        normalization="caffe",
        feature_dim=4096,
        feature_layer="fc2 after ReLU (4096); the ImageNet head 'predictions' reads it",
        weights=WeightSource(
            filename="vgg19_weights_tf_dim_ordering_tf_kernels.h5",
            url=f"{BASE_URL}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
            checksum="md5:cbe5617147190e668d6c5d5026f83318",
            format="h5",
            licence=_VGG_LICENCE,
            size=574_710_816,
        ),
        flops=3.9264e10,
        extra={"params": 139_570_240, "keras_top1": 71.256},
        **_COMMON,
    ),
    BackboneSpec(
        name="resnet50",
        family="resnet",
        config={"stages": (3, 4, 6, 3)},
        normalization="caffe",
        feature_dim=2048,
        feature_layer="global average pool of conv5_block3_out (2048, after ReLU)",
        weights=WeightSource(
            filename="resnet50_weights_tf_dim_ordering_tf_kernels.h5",
            url=f"{BASE_URL}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5",
            checksum="md5:2cb95161c43110f7111970584f804107",
            format="h5",
            licence=_RESNET_LICENCE,
            size=102_967_424,
        ),
        flops=7.7159e9,
        extra={"params": 23_481_472, "keras_top1": 74.704, "bn_eps": 1.001e-5},
        **_COMMON,
    ),
    BackboneSpec(
        name="mobilenet_v2",
        family="mobilenet_v2",
        config={"alpha": 1.0},
        normalization="minus_one_one",
        feature_dim=1280,
        feature_layer="global average pool of out_relu (Conv_1 + BN + ReLU6, 1280)",
        weights=WeightSource(
            # The file name encodes alpha and input size: ..._kernels_{alpha}_{rows}.h5.
            filename="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
            url=f"{BASE_URL}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
            checksum=None,  # Keras publishes none: pinned on first download (weights.py)
            format="h5",
            licence=_MOBILENET_LICENCE,
            size=14_536_120,
        ),
        flops=6.0155e8,
        extra={"params": 2_206_816, "keras_top1": 71.336, "bn_eps": 1e-3},
        **_COMMON,
    ),
]
