"""The report, `show` and `compare`, on a small real run (real photos, the real stages).

One run of the real pipeline over the 37 Pets breeds (3 photos each) with the real
efficientnet_lite0 and few ideal / attack steps feeds every test here: the session fixture
``small_run`` (`tests.small_run`, shared with `test_end_to_end`). Stages that are not
in this checkout yet are simply not run; their report sections must then say "not run".
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import cli, planner, results, runner, show
from pipeline.errors import UserError
from pipeline.inspect import artifact as inspect_artifact
from pipeline.progress import QuietReporter
from tests.small_run import SMALL

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")

ALL_SECTIONS = ("overview", "params", "data", "doctor", "metrics", "confusion", "per-class", "mistakes",
                "feature-maps", "gradcam", "map", "ideal", "adversarial", "timing")
SECTION_STAGE = {"data": "data", "doctor": "doctor", "metrics": "heads", "confusion": "heads", "per-class": "heads",
                 "mistakes": "heads", "feature-maps": "inspect", "gradcam": "inspect", "map": "inspect",
                 "ideal": "ideal", "adversarial": "adversarial"}


def _sections(page: str) -> dict[str, str]:
    """section id -> its class ('' when shown, 'off' when not run)."""
    return dict(re.findall(r'<section id="([^"]+)" class="([^"]*)"', page))


def _images(page: str) -> list[tuple[str, bytes]]:
    """(alt, decoded bytes) of every <img> in the page."""
    out = []
    for tag in re.findall(r"<img\b[^>]*>", page):
        src = re.search(r'src="([^"]*)"', tag).group(1)
        alt = (re.search(r'alt="([^"]*)"', tag) or re.search("()", "")).group(1)
        assert src.startswith("data:image/"), f"image {alt!r} is not inlined: {src[:60]}"
        out.append((html.unescape(alt), base64.b64decode(src.split(",", 1)[1])))
    return out


# --- the page model (fast, no run needed) ---------------------------------------------------------

def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_page_escapes_text_inlines_images_and_twins_in_markdown(tmp_path):
    from pipeline.report import document as d
    from pipeline.report import writer

    evil = "<script>alert(1)</script> | a&b"
    pic = d.Asset("assets/red.png", _png(7, 5))
    doc = d.Document("T <1>", "sub", [
        d.Section("one", "One", [d.Text(evil), d.Table(["class", "acc"], [[evil, "87.5%"], ["b", "1.0%"]]),
                                 d.Figure(pic, caption="red", alt="a red box")]),
        d.Section("two", "Two", status="not run", note="the stage is disabled"),
    ])
    html_path, md_path = writer.write(doc, tmp_path)
    page, md = html_path.read_text(), md_path.read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<td class="num">87.5%</td>' in page  # numbers right-aligned
    assert _images(page) == [("a red box", pic.data)]
    assert _sections(page) == {"one": "", "two": "off"}
    assert (tmp_path / "assets" / "red.png").read_bytes() == pic.data
    assert "](assets/red.png)" in md and "\\| a&b" in md and "## Two (not run)" in md


def test_params_table_marks_only_what_differs_from_the_defaults():
    from pipeline.params import to_plain
    from pipeline.report import readers
    from stages.report import ReportParams

    defaults = readers.section_defaults({"report": ReportParams})
    ran = {"report": to_plain(ReportParams(max_mistakes=3, title="x"))}
    rows = {k: (v, dflt, differs) for k, v, dflt, differs in readers.param_rows(ran, defaults)}
    assert {k for k, r in rows.items() if r[2]} == {"report.max_mistakes", "report.title"}
    assert rows["report.max_mistakes"] == (3, 24, True)
    # A list read back from a manifest equals the tuple default.
    assert readers.canonical([1, "all"]) == readers.canonical((1, "all"))


# --- the report ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_report_has_every_section_with_its_images(small_run):
    from PIL import Image

    page, graph = small_run.html, small_run.graph
    shown = _sections(page)
    assert list(shown) == list(ALL_SECTIONS)
    for sid, cls in shown.items():
        stage = SECTION_STAGE.get(sid)
        if stage is None or stage in graph.stages:
            assert cls == "", f"section {sid} is marked not run although stage {stage} ran"
        else:
            assert cls == "off", f"section {sid} should say 'not run': stage {stage} is not in this checkout"

    # No network: nothing but inline data, and the page forbids any other source.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "default-src 'none'" in page

    images = _images(page)
    sizes = {}
    for alt, data in images:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            sizes.setdefault(alt, im.size)
    classes = json.loads((small_run.plans["data"].out / "classes.json").read_text())
    # The confusion matrix grows with the class count so 37 names stay legible (>= ~25 px a row).
    cm = next(v for k, v in sizes.items() if k.startswith("confusion matrix"))
    assert cm[0] >= 25 * len(classes) and cm[1] >= 25 * len(classes), cm
    assert "per-class accuracy bars" in sizes

    # The gallery shows the most confident mistakes, as many as there are (up to max_mistakes).
    head = re.search(r"Highlighted: head &#x27;(\w+)&#x27; on test, the head chosen", page).group(1)
    # The highlighted row is the head the plots use, on the report's split.
    assert re.search(rf'<tr class="best"><td class="[a-z]*">{head}</td><td class="[a-z]*">test</td>', page)
    preds = json.loads((small_run.plans["heads"].out / f"predictions_{head}.json").read_text())["predictions"]
    wrong = sorted((p for p in preds if p["true"] != p["pred"]), key=lambda p: -p["p_pred"])
    n_shown = min(len(wrong), SMALL["report"]["max_mistakes"])
    assert page.count('<div class="card bad">') >= n_shown
    for p in wrong[:n_shown]:
        assert f"true: {p['true']}" in page and f"predicted {p['pred']}" in page
    thumbs = [a for a, _ in images if a.startswith("true: ")]
    assert len(thumbs) == n_shown, "every shown mistake has its thumbnail re-read from the photo"

    # Ideal images: one card per image of the main recipe, with the probability it reached.
    if "ideal" in graph.stages:
        ideal = json.loads((small_run.plans["ideal"].out / "ideal.json").read_text())
        main = [r for r in ideal["images"] if r["option"] == "main"]
        for r in main:
            assert f"p(target) = {100 * r['prob']:.1f}%" in page
        assert sum(1 for a, _ in images if a in {r["target"] for r in main}) == len(main)
        assert any(a.startswith("ideal images") for a in sizes), "the grid is shown"

    # Adversarial triplets: original, amplified perturbation, adversarial, with both predictions.
    if "adversarial" in graph.stages:
        adv = json.loads((small_run.plans["adversarial"].out / "metrics.json").read_text())
        roles = [a for a, _ in images if a in ("original", "perturbation (amplified)", "adversarial")]
        assert roles == ["original", "perturbation (amplified)", "adversarial"] * len(adv["examples"])
        for ex in adv["examples"]:
            assert html.escape(f"after: {ex['adversarial_prediction']}") in page

    # The data doctor: its tiles, leakage first, and the stage took under 5 s on these 111 photos
    # (scaled by the load: the machine is shared while tests run).
    if "doctor" in graph.stages:
        found = json.loads((small_run.plans["doctor"].out / "doctor.json").read_text())
        doctor = page[page.index('<section id="doctor"'):]
        doctor = doctor[:doctor.index("</section>")]
        assert "leaked copies" in doctor and doctor.index("Leakage across splits") < doctor.index("Likely label errors")
        flagged = [r for r in found["label_issues"] if r["issue"]]
        assert f"Likely label errors: {len(flagged)}" in doctor
        n_cards = min(len(flagged), SMALL["report"]["max_mistakes"])
        assert doctor.count("labelled ") >= n_cards
        seconds = json.loads((small_run.plans["doctor"].out / "manifest.json").read_text())["seconds"]
        load = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        assert seconds < 5 * load, f"doctor took {seconds:.1f} s on pets-dev (load factor {load:.1f})"
    # Inspect: a feature-map figure per photo and layer, a Grad-CAM card per explained example, the map.
    if "inspect" in graph.stages:
        ins = inspect_artifact.read(small_run.plans["inspect"].out)
        fmaps = [a for a in sizes if a.startswith("feature maps of ")]
        assert len(fmaps) == len(ins.feature_maps) == SMALL["inspect"]["photos"] * len(ins.layers)
        assert len(ins.gradcam) >= 1 and all(f"CAM of {r.pred}" in page for r in ins.gradcam)
        assert page.count('id="feature-map-data"') == 1 and "2-D map of the cached features" in sizes

    # Params: the smoke profile's changes are listed as differences from the defaults.
    assert "data.path" in page and "heads.logreg.c_per_decade" in page

    # The Markdown twin: same sections, images as files beside it.
    md = (small_run.out / "report.md").read_text()
    for sid in ALL_SECTIONS:
        assert f'<a id="{sid}"></a>' in md
    links = re.findall(r"\]\((assets/[^)]+)\)", md)
    assert links and all((small_run.out / link).is_file() for link in links)


_BUILD_ALONE = """
import json, sys
from pathlib import Path
from pipeline.report import sections, writer
from stages.report import ReportParams, params_schema
inputs = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}
doc = sections.build(inputs, {"report": ReportParams()}, params_schema(), sections.Options(max_mistakes=2))
writer.write(doc, Path(sys.argv[2]))
print(json.dumps(sorted(m for m in ("jax", "jaxlib", "flax", "tensorflow") if m in sys.modules)))
"""


@pytest.mark.slow
def test_report_without_the_gradient_stages_says_not_run_and_imports_no_jax(small_run, tmp_path):
    inputs = {n: str(small_run.plans[n].out) for n in ("data", "features", "heads")}
    proc = subprocess.run([sys.executable, "-c", _BUILD_ALONE, json.dumps(inputs), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [], "the report must not import jax or tensorflow"
    page = (tmp_path / "report.html").read_text()
    shown = _sections(page)
    assert shown["ideal"] == "off" and shown["adversarial"] == "off"
    assert all(shown[s] == "" for s in ("overview", "params", "data", "metrics", "confusion", "per-class"))
    assert "not part of this pipeline" in page
    assert "## Ideal images (not run)" in (tmp_path / "report.md").read_text()


def _chromium(args: list[str], tmp: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_report_opens_in_headless_chromium(small_run, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (Debian package `chromium`; .ci/run installs it)")
    page = tmp_path / "report.html"
    shutil.copy(small_run.out / "report.html", page)  # alone: it must not need its assets folder
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attrs = {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', body)}
    assert attrs.get("checked") == "true", f"the page's check did not run: {body[:300]}"
    n_img = len(re.findall(r"<img\b", small_run.html))
    assert int(attrs["images"]) == n_img > 0
    assert json.loads(attrs["images-broken"]) == [] and attrs["images-ok"] == "true"
    assert json.loads(attrs["errors"]) == []
    # Anything the page logged (script errors, blocked loads) shows up as a CONSOLE line.
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri()], tmp_path / "profile-shot")
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, res.stderr[-2000:]
    shutil.copy(page, ARTIFACTS / "report.html")


def _devtools_hover(page: Path, tmp: Path) -> dict:
    """Open `page` in headless Chromium over the DevTools protocol (`tests.devtools`), move the
    mouse onto one point of the 2-D map, and return what the page shows plus every console
    message / exception."""
    import asyncio

    from tests.devtools import drive

    async def script(cdp) -> dict:
        for domain in ("Page", "Runtime", "Log"):
            await cdp.call(f"{domain}.enable")
        await cdp.call("Page.navigate", url=page.as_uri())
        while not await cdp.value("document.body && document.body.dataset.checked === 'true'"):
            await asyncio.sleep(0.1)
        # The test point farthest from its neighbours, scrolled into view, in CSS pixels.
        point = await cdp.value("""(() => {
            const fig = document.getElementById('feature-map'); fig.scrollIntoView();
            const d = JSON.parse(document.getElementById('feature-map-data').textContent);
            const img = fig.querySelector('img'), r = img.getBoundingClientRect();
            let best = 0, bestD = -1;
            for (let i = 0; i < d.pos.length; i++) {
              if (!d.labels[i].includes('(test)')) continue;
              let m = 1e9;
              for (let j = 0; j < d.pos.length; j++) if (j !== i)
                m = Math.min(m, Math.hypot((d.pos[i][0] - d.pos[j][0]) * r.width, (d.pos[i][1] - d.pos[j][1]) * r.height));
              if (m > bestD) { bestD = m; best = i; }
            }
            return {x: r.left + d.pos[best][0] * r.width, y: r.top + d.pos[best][1] * r.height,
                    label: d.labels[best]};
        })()""")
        await cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=point["x"], y=point["y"])
        shown = await cdp.value("""(() => { const t = document.querySelector('#feature-map .pm-tip');
            return {text: t.textContent, display: getComputedStyle(t).display,
                    hover: document.getElementById('feature-map').dataset.hover || ''}; })()""")
        await cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=5, y=5)
        hidden = await cdp.value("getComputedStyle(document.querySelector('#feature-map .pm-tip')).display")
        body = await cdp.value("JSON.stringify(document.body.dataset)")
        await asyncio.sleep(0.2)
        await cdp.drain()  # what arrived meanwhile
        problems = [e for e in cdp.events if e.get("method") == "Runtime.exceptionThrown"
                    or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "warning"))
                    or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
        return {"point": point, "shown": shown, "hidden": hidden, "body": json.loads(body), "problems": problems}

    return drive(script, tmp, ["--window-size=1280,1600"])


@pytest.mark.slow
def test_map_hover_names_the_photo_in_headless_chromium(small_run, tmp_path):
    """A scripted mouse-over (DevTools Input.dispatchMouseEvent) on a point of the 2-D map shows the
    photo's id, true class and prediction; moving away hides it; nothing logs an error."""
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (Debian package `chromium`; .ci/run installs it)")
    if "inspect" not in small_run.graph.stages:
        pytest.skip("the inspect stage is not in this checkout")
    page = tmp_path / "report.html"
    shutil.copy(small_run.out / "report.html", page)
    got = _devtools_hover(page, tmp_path / "profile-cdp")
    m = inspect_artifact.read(small_run.plans["inspect"].out).points
    label = got["point"]["label"]
    i = next(k for k, pid in enumerate(m.ids) if label.startswith(f"{pid} ("))
    assert got["shown"]["display"] == "block" and got["shown"]["text"] == label == got["shown"]["hover"]
    assert f"true {m.classes[m.true[i]]}" in label and f"predicted {m.classes[m.pred[i]]}" in label
    assert got["hidden"] == "none"
    assert got["body"].get("checked") == "true" and got["body"].get("imagesOk") == "true"
    assert json.loads(got["body"]["errors"]) == [] and got["problems"] == [], got["problems"]


# --- show and compare ----------------------------------------------------------------------------

def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_show_prints_the_latest_runs_headline_metrics(small_run):
    text = show.show_latest(small_run.cache_dir)
    m = _metrics(small_run.plans["heads"].out)
    for head, h in m["heads"].items():
        for split in ("train", "val", "test"):
            row = next(ln for ln in text.splitlines() if ln.split()[:2] == [head, split])
            assert f"{h[split]['accuracy']:.4f}" in row and f"{h[split]['log_loss']:.4f}" in row
    assert small_run.plans["heads"].key in text
    assert str(small_run.out / "report.html") in text


def test_show_without_a_run_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="run all"):
        show.show_latest(tmp_path)


@pytest.fixture(scope="module")
def second_run(small_run):
    """The same run with another heads seed: only heads reruns (the backbone pass is reused)."""
    overrides = ["heads.seed=1"]
    params = planner.resolve_params(small_run.graph, [small_run.params_file], overrides)
    res = runner.execute(small_run.graph, params, small_run.cache_dir, ["heads"], QuietReporter())
    assert {r.name: r.action for r in res} == {"data": "reused", "features": "reused", "doctor": "reused",
                                               "heads": "ran"}
    return SimpleNamespace(overrides=overrides, heads=planner.plan(small_run.graph, params, small_run.cache_dir)["heads"])


def _rows(text: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.startswith(("heads/", "heads."))}


@pytest.mark.slow
def test_compare_two_keys_shows_both_values_and_the_change(small_run, second_run):
    key_a, key_b = small_run.plans["heads"].key, second_run.heads.key
    # A heads key names its whole run: what it read, and the newest outputs that read it.
    # (Later stages: the newest output that read it; test_end_to_end reruns some on this cache.)
    chain = results.chain_from_heads(small_run.cache_dir, key_a)
    assert set(chain) == set(small_run.graph.names)
    assert all(chain[n] == small_run.plans[n].key for n in ("data", "features", "doctor", "heads"))
    args = argparse.Namespace(a=key_a[:7], b=key_b[:7], cache_dir=small_run.cache_dir, overrides=[])
    text = show.compare(args, resolve=None)
    rows = _rows(text)
    ma, mb = _metrics(small_run.plans["heads"].out), _metrics(second_run.heads.out)
    for head in ma["heads"]:
        for split in ("val", "test"):
            for metric in ("accuracy", "log_loss"):
                a, b = ma["heads"][head][split][metric], mb["heads"][head][split][metric]
                got = rows[f"heads/{head}/{split}/{metric}"]
                assert got[:2] == [f"{a:.4f}", f"{b:.4f}"]
                assert got[2] == ("0" if a == b else f"{b - a:+.4f}")
    assert rows["heads.seed"] == ["0", "1"]
    assert "data.path" not in rows  # only the params that differ


@pytest.mark.slow
def test_compare_latest_against_overrides_through_the_cli(small_run, second_run, capsys):
    argv = ["compare", "latest", "--params", str(small_run.params_file), "--cache-dir", str(small_run.cache_dir)]
    assert cli.main(argv + ["-S", "heads.seed=1"]) == 0
    out = capsys.readouterr().out
    assert second_run.heads.key[:8] in out and "-S heads.seed=1" in out
    assert _rows(out)["heads.seed"] == ["0", "1"]

    assert cli.main(argv + ["-S", "heads.seed=7"]) == 2  # never run: say so, and how to run it
    assert "has no heads output yet" in capsys.readouterr().err
    assert cli.main(["compare", "zzzz", "--cache-dir", str(small_run.cache_dir)]) == 2
    assert "no complete heads output" in capsys.readouterr().err


# --- tfds sources: thumbnails kept by the data stage ---------------------------------------------

def test_tfds_mistakes_get_thumbnails_from_the_data_stage(tmp_path):
    """tfds photos live in TFRecords; the data stage keeps thumbnails the report shows."""
    import numpy as np
    from PIL import Image

    from pipeline.report import readers, sections
    from pipeline.thumbs import SHORT_SIDE
    from stages import data as data_stage
    from tests.stage_helpers import run_stage, section
    from tests.tfds_fixtures import fake_jpeg, mock_tfds

    sizes = {"train": 12, "test": 6}
    with mock_tfds(tmp_path / "tfds", "oxford_iiit_pet", sizes):
        p = {"data": section(data_stage.DataParams, "data", source="tfds", name="oxford_iiit_pet",
                             data_dir=str(tmp_path / "tfds"))}
        run_stage(data_stage.STAGE, p, tmp_path / "data")
    data_dir = tmp_path / "data"
    splits = json.loads((data_dir / "splits.json").read_text())
    ids = [i for s in splits.values() for i in s["ids"]]
    finder = readers.ImageFinder(data_dir)
    assert finder.find(ids[0]) is None                            # no file on disk for a tfds id ...
    for image_id in ids:                                          # ... but every photo has a thumbnail
        with Image.open(io.BytesIO(finder.source(image_id))) as im:
            assert im.format == "JPEG" and min(im.size) <= SHORT_SIDE
    # The thumbnail is the photo: closest to its own source among all fake photos of its split.
    test_ids = splits["test"]["ids"]
    with Image.open(io.BytesIO(finder.source(test_ids[0]))) as im:
        got = np.asarray(im.convert("RGB"), dtype=float)
    index = int(test_ids[0].rsplit("__", 1)[1])
    errs = [np.abs(np.asarray(Image.open(io.BytesIO(fake_jpeg("test", i))), dtype=float) - got).mean()
            for i in range(sizes["test"])]
    assert int(np.argmin(errs)) == index

    # The mistakes gallery draws its cards from those thumbnails.
    classes = json.loads((data_dir / "classes.json").read_text())
    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    from pipeline.heads.artifact import write_predictions

    y = np.asarray(splits["test"]["labels"])
    probs = np.zeros((len(y), len(classes)))   # every photo a confident mistake: the next class at 0.9
    probs[np.arange(len(y)), (y + 1) % len(classes)] = 0.9
    probs[np.arange(len(y)), y] = 0.05
    write_predictions(heads_dir / "predictions_logreg.json", probs, y, test_ids, classes, top_k=3)
    sec = sections.mistakes_section(heads_dir, "logreg", classes, finder, sections.Options(split="test"))
    gallery = next(b for b in sec.blocks if isinstance(b, sections.Gallery))
    assert len(gallery.cards) == len(test_ids) and all(card.images for card in gallery.cards)

