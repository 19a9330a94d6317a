"""The embedded demo sample: 111 real Oxford-IIIT Pet photos shipped inside the package.

3 photos per breed for the 37 breeds (capitalised folder = cat breed), downscaled to 320 px on
the longer side (tools/make_sample.py); licence and attribution in ``pipeline/sample/LICENSE``
(CC BY-SA 4.0, Parkhi et al. 2012). ``data.source: sample`` reads it exactly like a folder of
class folders, so the first ``python -m pipeline run all`` needs no download.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

SAMPLE_NAME = "pets"


def sample_root() -> Path:
    """The sample's folder of class folders inside the installed package."""
    root = Path(__file__).resolve().parents[1] / "sample" / SAMPLE_NAME
    if not root.is_dir():
        raise UserError(f"data.source: the embedded sample is missing from this installation ({root}). "
                        "Reinstall the package (pip install --force-reinstall .), or use "
                        "-S data.source=folder -S data.path=FOLDER.")
    return root
