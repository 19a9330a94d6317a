"""The product's stages, in order. Each name is a module here that defines `STAGE`.

Stages that are not written yet are skipped so that the graph stays importable while it grows.
"""

import importlib.util

_ALL = ("data", "features", "heads", "ideal", "adversarial", "report")

STAGES = [name for name in _ALL if importlib.util.find_spec(f"stages.{name}") is not None]
