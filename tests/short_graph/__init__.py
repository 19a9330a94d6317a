"""The product's stages up to the report, without the slow gradient and fine-tuning stages.

data -> features -> doctor -> heads, trunk (the sharded activations at the cut), inspect (the
2-D map among them), and the report over them (its sections for the stages left out say "not run"). The stages are the real
ones, unchanged but for the report's list of inputs; tests that must run the pipeline through the
report in seconds (hostile names, fault injection) use it as ``--graph tests.short_graph``.
"""

from __future__ import annotations

import dataclasses

from stages import data, doctor, features, heads, inspect, report, trunk

STAGES = [data.STAGE, features.STAGE, doctor.STAGE, heads.STAGE, trunk.STAGE, inspect.STAGE,
          dataclasses.replace(report.STAGE, deps=("data", "features", "doctor", "heads", "trunk", "inspect"))]
