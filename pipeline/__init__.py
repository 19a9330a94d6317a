"""Transfer learning with cached embeddings: the engine (CLI, stage graph, params, cache).

Importing this package must stay cheap: no jax, flax or tensorflow at import time, so that
`python -m pipeline status` and a no-op `run all` answer in well under a second.
"""

__version__ = "0.1.0"
