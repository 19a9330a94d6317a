"""Names from the data stay inert everywhere they land: the report (in headless Chromium), its
Markdown twin, predict's table / CSV / JSON, the exported folder and its model card.

The folder (`tests.hostile_fixtures`) has class and file names carrying HTML, a ``<!--<script>``
opener, ``</script>``, quotes, newlines, terminal escapes, leading ``= + - @``, U+2028/2029 and
bytes that are not UTF-8, plus a symlink loop; the real stages run over it once (`hostile_run`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline import cache
from tests.hostile_fixtures import CLASSES, FILES, hostile_strings
from tests.integrity_helpers import cli

CHROMIUM = Path("/usr/bin/chromium")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


def _output(run, stage: str) -> Path:
    (d,) = [p for p in (run.root / stage).iterdir() if cache.is_complete(run.root, stage, p.name)]
    return d


def test_data_stage_lists_the_loop_as_skipped_and_keeps_every_name(hostile_run):
    data = _output(hostile_run, "data")
    skipped = json.loads((data / "skipped.json").read_text())
    assert [(Path(s["id"]).name, s["kind"]) for s in skipped] == [("loop.jpg", "symlink_loop")]
    assert "OSError" not in hostile_run.stderr and "Traceback" not in hostile_run.stderr
    # No name reached the terminal raw (matplotlib's missing-glyph warning used to carry one).
    assert not CONTROL.search(hostile_run.stdout + hostile_run.stderr.replace("\n", " ")), \
        [ln for ln in hostile_run.stderr.splitlines() if CONTROL.search(ln)][:3]
    splits = json.loads((data / "splits.json").read_text())
    ids = {Path(i).name for split in splits.values() for i in (split["ids"] if isinstance(split, dict) else split)}
    assert os.fsdecode(b"bytes-\xff\xfe.jpg") in ids and "new\nline.jpg" in ids


def _chromium_dom(page: Path, tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp}",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([str(CHROMIUM), *flags, "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=120)


def test_report_in_chromium_has_every_section_parsed_map_data_and_nothing_live(hostile_run, tmp_path):
    page = _output(hostile_run, "report") / "report.html"
    raw = page.read_text(encoding="utf-8")
    sections = re.findall(r'<section id="([^"]+)"', raw)
    # The sections a map-swallowing page lost (those after the map) are among them.
    assert {"data", "metrics", "mistakes", "map", "ideal", "adversarial", "timing"} <= set(sections), sections
    assert 'id="map" class=""' in raw, "the map section did not render"
    assert 'id="feature-map-data"' in raw, "the 2-D map (the JSON this test is about) is missing"
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (Debian package `chromium`; .ci/run installs it)")
    dom = _chromium_dom(page, tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    out = dom.stdout
    # Every section the page was written with is an element of the parsed page, in order.
    assert re.findall(r'<section id="([^"]+)"', out) == sections
    assert "<footer>" in out
    # The page's own checks ran (its last script) and saw no error, no broken image.
    body = dict(re.findall(r'data-([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", out).group(1)))
    assert body.get("checked") == "true", body
    assert json.loads(html.unescape(body["errors"])) == [] and body.get("images-ok") == "true", body
    assert [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln] == []
    # Asked in the page itself: the section elements, and the map's data parsed by JSON.parse.
    seen = _evaluate(page, tmp_path / "profile-cdp", {
        "sections": "Array.from(document.querySelectorAll('main > section')).map(s => s.id)",
        "labels": "JSON.parse(document.getElementById('feature-map-data').textContent).labels",
        "checked": "document.body.dataset.checked"})
    assert seen["sections"] == sections and seen["checked"] == "true", seen["sections"]
    labels = "\n".join(seen["labels"])
    assert "<!--<script>" in labels and "onerror=alert(2)" in labels and "\\x1b" in labels
    # Nothing from the names became an element: the scripts and images are the page's own.
    parsed, written = _elements(out), _elements(raw)
    assert [t for t, _ in parsed if t == "script"] == [t for t, _ in written if t == "script"]
    assert not [(t, a) for t, attrs in parsed for a, _ in attrs if a.startswith("on")], "a handler is live"
    assert all(dict(attrs).get("src", "").startswith("data:") for t, attrs in parsed if t == "img")
    assert {t for t, _ in parsed} <= {t for t, _ in written} | {"tbody"}


def _evaluate(page: Path, profile: Path, exprs: dict[str, str]) -> dict:
    """Open `page` in headless Chromium over the DevTools protocol (`tests.devtools`) and return
    each JavaScript expression's value once the page's own check has run. A dialog (``alert``)
    opened by anything on the page fails the test."""
    import asyncio
    import time

    from tests.devtools import drive

    async def script(cdp) -> dict:
        for domain in ("Page", "Runtime"):
            await cdp.call(f"{domain}.enable")
        await cdp.call("Page.navigate", url=page.as_uri())
        end = time.time() + 60
        while not await cdp.value("document.readyState === 'complete' && !!document.body"):
            assert time.time() < end
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        got = {k: await cdp.value(e) for k, e in exprs.items()}
        dialogs = [e for e in cdp.events if e.get("method") == "Page.javascriptDialogOpening"]
        assert dialogs == [], dialogs
        return got

    return drive(script, profile)


def _elements(page: str) -> list[tuple[str, list]]:
    """(tag, attributes) of every element start tag, as an HTML parser reads them."""
    from html.parser import HTMLParser

    found: list[tuple[str, list]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    P().feed(page)
    return found


def test_report_markdown_has_no_html_or_control_characters_from_the_names(hostile_run):
    md = (_output(hostile_run, "report") / "report.md").read_text(encoding="utf-8")
    tags = set(re.findall(r"<[A-Za-z/!][^>]*>", md))
    assert {t for t in tags if not re.fullmatch(r'<a id="[\w-]+"></a>|<a id="[\w-]+">|</a>|<br>', t)} == set()
    assert not CONTROL.search(md)
    assert "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "\\[link\\](javascript:alert(4))" in md or "javascript:alert(4)" not in md


def _predict(run, *extra: str) -> subprocess.CompletedProcess:
    return cli("predict", str(run.photos), "--quiet", *extra, *run.opts)


@pytest.fixture(scope="module")
def predicted(hostile_run, tmp_path_factory):
    """predict over the hostile folder: the CLI's JSON (through --out) and its table on stdout,
    and the CSV rendered by the same renderer from the same answer (one backbone pass, not two)."""
    import numpy as np

    from pipeline.predict import output
    from pipeline.predict.inputs import BadFile
    from pipeline.predict.predict import Prediction, PredictResult

    tmp = tmp_path_factory.mktemp("predicted")
    res = cli("predict", str(hostile_run.photos), "--quiet", "--format", "json", "--out", str(tmp / "out.json"),
              *hostile_run.opts)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    text = (tmp / "out.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    classes = doc["classes"]
    preds = []
    for p in doc["predictions"]:   # top-3 of 3 classes: every probability is there
        probs = dict([(p["class"], p["probability"]), *map(tuple, p["next"])])
        preds.append(Prediction(p["file"], np.array([probs[c] for c in classes], np.float32)))
    result = PredictResult(classes, doc["head"], preds, [BadFile(**b) for b in doc["skipped"]], 1.0)
    return {"json": text, "json_stderr": res.stderr, "table": output.render(result, "table", 3),
            "csv": output.render(result, "csv", 3)}


def test_predict_table_shows_control_characters_escaped(predicted):
    table = predicted["table"]
    assert not CONTROL.search(table) and not CONTROL.search(predicted["json_stderr"])
    assert "\\x1b[2J\\x1b[31mred.jpg" in table and "new\\nline.jpg" in table
    # The loop inside the folder is skipped with its reason, never called missing.
    assert re.search(r"loop\.jpg: a symbolic link loop .*\(symlink_loop\)", table), table


def test_predict_csv_has_no_formulas_and_no_control_characters(predicted):
    rows = list(csv.reader(io.StringIO(predicted["csv"])))
    assert rows[0][:3] == ["file", "class", "probability"]
    for row in rows[1:]:
        for cell in row:
            assert not CONTROL.search(cell), row
            assert not cell.startswith(("=", "+", "-", "@")), f"formula in {row}"
    files = {Path(r[0]).name for r in rows[1:]}
    assert "=1+1'\".jpg" in files and "new\\nline.jpg" in files   # inside a path: no formula
    assert any(r[1].startswith("'=2+5 dogs \\x1b[31mred") for r in rows[1:] if r[1])
    from pipeline.predict.output import csv_text

    assert [csv_text(x) for x in ("=1+1", "+1", "-1", "@x", "a=b", "\x1b")] == \
        ["'=1+1", "'+1", "'-1", "'@x", "a=b", "\\x1b"]


def test_predict_json_keeps_every_name_exactly(predicted):
    doc = json.loads(predicted["json"])
    names = {os.path.basename(p["file"]) for p in doc["predictions"]}
    assert set(FILES) <= names and os.fsdecode(b"bytes-\xff\xfe.jpg") in names
    assert set(doc["classes"]) == set(CLASSES)
    assert [s["kind"] for s in doc["skipped"]] == ["symlink_loop"]


def test_export_card_and_labels_are_inert_and_the_folder_is_replaced_whole(hostile_run, tmp_path):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.onnx").write_text("an older export's model")   # what used to survive
    refused = cli("export", "--out", str(out), "--no-check", *hostile_run.opts)
    assert refused.returncode == 2 and "already holds files" in refused.stderr, refused.stderr
    assert (out / "model.onnx").exists()
    done = cli("export", "--out", str(out), "--force", "--no-check", *hostile_run.opts)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "labels.txt", "model.stablehlo",
                                                     "preprocess.json", "preprocess.py"]
    assert not list(tmp_path.glob(".exported.*"))
    labels = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert len(labels) == len(CLASSES) and not any(CONTROL.search(x) for x in labels)
    exact = json.loads((out / "preprocess.json").read_text())["labels"]
    assert set(exact) == set(CLASSES) and len(exact) == len(labels)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert not CONTROL.search(card)
    tags = set(re.findall(r"<[A-Za-z/!][^>]*>", card))
    assert tags == set(), tags
    assert "&lt;img src=x onerror=alert(1)&gt;" in card
    shutil.rmtree(out)


def test_every_hostile_string_is_somewhere_in_the_report(hostile_run):
    """The names are escaped, not dropped: each one shows in the page's text."""
    raw = html.unescape((_output(hostile_run, "report") / "report.html").read_text(encoding="utf-8"))
    from pipeline.inert import visible

    missing = [s for s in hostile_strings() if visible(s).replace("\\udc", "\\\\udc") not in raw
               and visible(s) not in raw and s not in raw]
    assert len(missing) < len(hostile_strings()), missing
