"""The data doctor's machinery (the `doctor` stage is `stages/doctor.py`).

- `neighbors`: all-pairs cosine top-k, a blocked jitted matmul sharded over the local devices;
- `pixels`: content hashes and the thumbnail check that confirms a near-duplicate;
- `duplicates`: candidate pairs, groups, which copy a group keeps and which leak;
- `labels`: out-of-fold logreg probabilities and confident learning;
- `outliers`: kNN-distance outliers;
- `drops`: what `doctor.action` removes, and `apply` for the stages that read it (heads);
- `examine`: all of the above in order; `summary`, `report`: the summary and the report section;
- `planted`: known problems to plant in real photos (calibration and tests).
"""
