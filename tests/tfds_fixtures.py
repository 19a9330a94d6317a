"""tensorflow-datasets sources for tests, without network.

- `mock_tfds`: `tfds.testing.mock_data` for a real catalogue dataset (oxford_iiit_pet,
  cats_vs_dogs) with its real features and class names, split sizes written as metadata files
  (as tfds's docs recommend), and an `as_dataset_fn` that yields small JPEGs, honours split
  slicing (``train[3:9]``) and adds ``tfds_id`` like the real reader.
- `TinyPets`: a real tfds builder prepared on disk (TFRecords in several shards), to exercise
  the real reading path: sequential order, slicing and tfds ids across shard files.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image


def fake_jpeg(split: str, index: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small JPEG whose colour encodes (split, index): distinct and deterministic."""
    rng = np.random.default_rng([index, len(split), ord(split[0])])
    a = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def label_of(split: str, index: int, num_classes: int) -> int:
    return (index * 5 + len(split)) % num_classes


@contextlib.contextmanager
def mock_tfds(tmp: Path, name: str, split_sizes: Mapping[str, int]) -> Iterator[None]:
    """Mock tfds `name` with `split_sizes` examples per split (see module docstring)."""
    builder = tfds.builder(name, data_dir=str(tmp))
    template = lambda s: tfds.core.ShardedFileTemplate(  # noqa: E731
        data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, split=s, filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template(s))
        for s, n in split_sizes.items()]))
    Path(builder.data_path).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    image_key, label_key = builder.info.supervised_keys
    num_classes = builder.info.features[label_key].num_classes

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        m = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
        base, lo, hi = m.group(1), m.group(2), m.group(3)
        n = split_sizes[base]
        idx = range(int(lo or 0), min(n, int(hi) if hi else n))
        ex = {image_key: [fake_jpeg(base, i) for i in idx],
              label_key: [label_of(base, i, num_classes) for i in idx]}
        if read_config is not None and read_config.add_tfds_id:
            ex["tfds_id"] = [f"{name}-{base}.tfrecord-00000-of-00001__{i}" for i in idx]
        return tf.data.Dataset.from_tensor_slices(
            {k: tf.constant(v, dtype=tf.string if k != label_key else tf.int64) for k, v in ex.items()})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp)):
        yield


class TinyPets(tfds.core.GeneratorBasedBuilder):
    """A real 3-class image dataset, prepared from generated images (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    SIZES = {"train": 23, "test": 9}
    CLASSES = ["cat", "dog", "fox"]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=self.CLASSES),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in self.SIZES}

    def _generate_examples(self, split):
        for i in range(self.SIZES[split]):
            img = np.asarray(Image.open(io.BytesIO(fake_jpeg(split, i, (36, 28)))))
            yield f"{split}_{i}", {"image": img, "label": label_of(split, i, 3),
                                   "file_name": f"{split}_{i}.jpg"}


def prepare_tiny_pets(data_dir: Path, num_shards: int = 3) -> tfds.core.DatasetBuilder:
    """Prepare TinyPets under `data_dir` in `num_shards` TFRecord files per split."""
    builder = TinyPets(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=num_shards))
    return builder
