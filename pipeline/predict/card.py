"""The exported folder's README.md: a model card (data, backbone, head, params, metrics, loading)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from pipeline.predict import formats as fmt_lib
from pipeline.predict.model import Classifier
from pipeline.predict.resolve import RunRef


def _metrics_table(splits: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = ["| split | images | accuracy | mean per-class accuracy | log loss |", "|---|---|---|---|---|"]
    for split, m in splits.items():
        def f(k: str) -> str:
            v = m.get(k)
            return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
        rows.append(f"| {split} | {m.get('n', '-')} | {f('accuracy')} | {f('mean_per_class_accuracy')} | {f('log_loss')} |")
    return rows


def _platforms() -> list[str]:
    import jax

    return [jax.default_backend()]


def _jax_version() -> str:
    import jax

    return jax.__version__


def md_text(text: Any) -> str:
    """A string from the data (a class or folder name) made inert in Markdown."""
    from pipeline.inert import md_text as md

    return md(text)


def _fenced_json(v: Any) -> str:
    """JSON for a line inside a ``` fence: a backtick could close the fence early."""
    return json.dumps(v).replace("`", "\\u0060")


def _data_line(params: Mapping[str, Any]) -> str:
    src = params.get("data.source", "?")
    if src == "folder":
        return f"image folder {md_text(params.get('data.path'))}"
    return f"tensorflow-datasets `{params.get('data.name', '?')}`"


def model_card(run: RunRef, head: str, clf: Classifier, fmts: Sequence[str], checks: Mapping[str, float]) -> str:
    """Markdown text of the model card.

    Args:
      run: the run exported.
      head: the head's name.
      clf: the classifier (its spec and preprocessing).
      fmts: the formats written.
      checks: per format, the largest probability difference against jax on random crops.
    """
    spec, pre = clf.spec, clf.preprocess
    h = run.metrics.heads.get(head)
    hyper = {k: v for k, v in (h.hyper if h else {}).items() if isinstance(v, (int, float, str, bool))}
    lines = [
        f"# Image classifier: {len(clf.classes)} classes, {spec.name} + {head}", "",
        f"Exported by `python -m pipeline export` from heads run `{run.keys.get('heads')}` "
        f"(features `{run.keys.get('features')}`, data `{run.keys.get('data')}`). It runs without "
        "the project that trained it: each model file needs only its runtime, numpy and PIL.", "",
        "## Load it", "",
        "```python",
        "from preprocess import load              # PIL + numpy, reads preprocess.json",
        "x = load(['photo.jpg'])                  # uint8 (B, S, S, 3)",
        "```", "",
    ]
    for f in fmts:
        lines += [f"`{fmt_lib.FILES[f]}` ({f}):", "", "```python", fmt_lib.LOAD_SNIPPETS[f], "```", ""]
    lines += [
        "`probs[i, j]` is the probability of class `labels.txt` line `j` for photo `i`; the batch "
        "size is free.", "",
        "## Input and preprocessing", "",
        f"RGB uint8 crops `(batch, {pre.input_size}, {pre.input_size}, 3)`: the shorter side resized "
        f"to {pre.resize_size} with PIL's antialiased {pre.resize_method} filter, then a centre "
        f"{pre.input_size} x {pre.input_size} crop (`preprocess.py` does it; `preprocess.json` "
        "lists every step). Inside the model: normalisation "
        f"({pre.normalization}), the backbone" + (", the mirrored view (averaged)" if pre.flip else "")
        + ", the head, softmax. Another resize (OpenCV, tf.image) shifts the probabilities a little: "
        "the head was fit on features of PIL-resized photos.", "",
        "## Model", "",
        f"- backbone: `{spec.name}` ({spec.family}, ImageNet-pretrained, frozen), {spec.feature_dim}-d "
        f"features from {spec.feature_layer}; weights licence: {spec.weights.licence}",
        f"- head: `{head}` ({json.dumps(hyper)[:400]})",
        f"- classes ({len(clf.classes)}): {md_text(', '.join(clf.classes[:40]))}" + (" ..." if len(clf.classes) > 40 else ""),
        f"- data: {_data_line(run.params)}", "",
        "## Metrics (this head, from the heads stage)", "", *_metrics_table(h.splits if h else {}), "",
        "## Formats", "",
        "| file | checked against jax on random crops (max abs. probability difference) |", "|---|---|",
        *[f"| `{fmt_lib.FILES[f]}` | {checks[f]:.2e} |" if f in checks else f"| `{fmt_lib.FILES[f]}` | not checked |"
          for f in fmts], "",
        *([f"`model.stablehlo` runs on {', '.join(_platforms())} with jax {_jax_version()} or a newer jax "
           "(jax.export keeps old serialisations loadable for a few releases).", ""] if "stablehlo" in fmts else []),
        "## Params of the run", "", "```yaml",
        # JSON strings escape every control character; inside a fence nothing else is markup.
        *[f"{k}: {_fenced_json(v)}" for k, v in sorted(run.params.items())
          if k.split(".")[0] in ("data", "backbone", "features", "heads")],
        "```", "",
    ]
    return "\n".join(lines)
