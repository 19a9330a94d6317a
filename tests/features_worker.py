"""Run the features stage on the tiny test backbone in a fresh process (for kill/resume and
multi-device tests): ``python -m tests.features_worker DATA_DIR OUT_DIR [--devices N]
[--batch B] [--shard S] [--delay SECONDS] [--no-finalize]``.

``--delay`` slows each image decode down (like a slow disk) so that a test can kill the process
between two shards; it does not change any result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--devices", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--shard", type=int, default=8)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--no-finalize", action="store_true")
    a = ap.parse_args(argv)

    from pipeline.distributed import configure_cpu_devices

    configure_cpu_devices(a.devices)  # before jax is imported
    from pathlib import Path

    from pipeline import images
    from stages import features
    from tests import tiny_backbone
    from tests.stage_helpers import make_ctx, section

    if a.delay:
        decode = images.decode_image

        def slow_decode(*args, **kw):
            time.sleep(a.delay)
            return decode(*args, **kw)

        images.decode_image = slow_decode
    params = {"backbone": section(features.BackboneParams, "backbone"),
              "features": section(features.FeaturesParams, "features", batch_size=a.batch, shard_size=a.shard)}
    ctx = make_ctx(features.STAGE, params, Path(a.out_dir), inputs={"data": Path(a.data_dir)})
    stats = features.extract(ctx, tiny_backbone.make())
    if not a.no_finalize:
        stats = features.finalize(ctx)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
