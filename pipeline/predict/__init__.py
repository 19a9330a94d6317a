"""Use a trained classifier: `predict` on new photos, and `export` it to run without this project.

Both are commands over finished stage outputs, not stages: they read the heads output a run left
(and, through its manifests, the backbone and preprocessing the features stage used) and write
nothing into the cache except XLA's compilation cache.

- `resolve`: which run (params, ``-S``, ``--params`` or ``--run KEY``) and which head.
- `inputs`: files, folders and globs to a list of photos; decoding in threads, bad files listed.
- `model`: the classifier as one jitted function, uint8 pixels -> class probabilities.
- `predict`: batches of photos through it; `output` formats the rows.
- `export` / `formats`: the self-contained classifier folder (StableHLO, ONNX, TFLite).
"""
