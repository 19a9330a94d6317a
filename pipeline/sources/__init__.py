"""Where labelled images come from: class folders on disk, the embedded sample, or tensorflow-datasets.

The data stage uses this package to list a source, fix its splits and verify its images; the
stages after it (features, adversarial) use `load_data` and `DataSet.sources` to read the images
of a split back in the same order, whatever the source.

- `folders`: walking and scanning a folder source (layout rules in its docstring);
- `digests`: content fingerprints of folders, with a stat memo;
- `sample`: the embedded demo sample (a folder inside the package);
- `splits`: seeded, stratified carving of val / test;
- `tfds_source`: preparing, listing and reading tensorflow-datasets;
- `dataset`: the data stage's output read back.

Only the standard library is imported at module level: fingerprints run while deciding what is
up to date.
"""

from pipeline.sources.dataset import DataSet, SplitRecords, load_data
from pipeline.sources.digests import folder_digests, folder_fingerprint
from pipeline.sources.folders import (IMAGE_SUFFIXES, FolderScan, check_folder, scan_folder,
                                      walk_files)
from pipeline.sources.sample import sample_root
from pipeline.sources.splits import carve, limit_per_class
from pipeline.sources.tfds_source import (DatasetUnavailableError, prepare_tfds, tfds_default_data_dir,
                                          tfds_fingerprint, tfds_keys, tfds_read, tfds_splits)

SPLITS = ("train", "val", "test")

__all__ = ["SPLITS", "IMAGE_SUFFIXES", "DataSet", "DatasetUnavailableError", "FolderScan", "SplitRecords",
           "carve", "check_folder", "folder_digests", "folder_fingerprint", "limit_per_class", "load_data",
           "prepare_tfds", "sample_root", "scan_folder", "tfds_default_data_dir", "tfds_fingerprint",
           "tfds_keys", "tfds_read", "tfds_splits", "walk_files"]
