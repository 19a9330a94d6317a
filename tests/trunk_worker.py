"""Run the trunk stage on the tiny cuttable test backbone in a fresh process (for the kill/resume
test): ``python -m tests.trunk_worker DATA_DIR OUT_DIR [--delay SECONDS]``.

``--delay`` slows each image decode down so that a test can kill the process between shards; it
does not change any result.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args(argv)

    from pathlib import Path

    from pipeline import images
    from stages import trunk
    from tests import tiny_backbone
    from tests.test_finetune import trunk_params
    from tests.stage_helpers import make_ctx

    if a.delay:
        decode = images.decode_image

        def slow_decode(*args, **kw):
            time.sleep(a.delay)
            return decode(*args, **kw)

        images.decode_image = slow_decode
    ctx = make_ctx(trunk.STAGE, trunk_params(), Path(a.out_dir), inputs={"data": Path(a.data_dir)})
    trunk.extract(ctx, tiny_backbone.make_cuttable())
    trunk.finalize(ctx)


if __name__ == "__main__":
    main(sys.argv[1:])
