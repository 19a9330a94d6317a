"""Every command, given bad paths, answers with one sentence and exit status 2, never a traceback.

Bad paths of every kind a user can type: missing, a file where a folder is expected, a folder
where a file is expected, unreadable (skipped when the tests run as root, who reads anything),
a symlink loop, and a binary params file. The commands run in this process through
`pipeline.cli.main` (each answer comes before jax is imported, so the whole sweep takes seconds);
one case runs in a subprocess to check the real interpreter's output too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bad(tmp_path: Path) -> dict[str, Path]:
    """Paths that are wrong in each way, and one good folder."""
    paths = {"missing": tmp_path / "no-such-thing", "file": tmp_path / "a-file.txt",
             "folder": tmp_path / "a-folder", "loop": tmp_path / "loop", "binary": tmp_path / "params.bin",
             "unreadable": tmp_path / "locked", "good": tmp_path / "good-cache"}
    paths["file"].write_text("not a folder\n")
    paths["folder"].mkdir()
    (paths["folder"] / "x.txt").write_text("x")
    os.symlink(paths["loop"], paths["loop"])          # a link to itself: ELOOP on any use
    paths["binary"].write_bytes(bytes(range(256)) * 8)
    paths["unreadable"].mkdir()
    (paths["unreadable"] / "params.yaml").write_text("data: {}\n")
    paths["unreadable"].chmod(0)
    yield paths
    paths["unreadable"].chmod(0o755)


def _answer(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:   # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


def _check(argv: list[str], capsys, must: str = "") -> str:
    code, err = _answer(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{argv}: exit {code}, stderr:\n{err}"
    assert "Traceback" not in err and "unexpectedly" not in err, f"{argv}:\n{err}"
    # A run may have said which stage it started ("▶ data ..."); the answer is the last line.
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines[-1:] and all(ln.startswith("▶") for ln in lines[:-1]), \
        f"{argv}: not one sentence:\n{err}"
    assert must in lines[-1], f"{argv}: {must!r} not in {lines[-1]!r}"
    return lines[-1]


def _params_cases(b: dict[str, Path]) -> list[tuple[str, str]]:
    cases = [(str(b["missing"]), "does not exist"), (str(b["folder"]), "is a folder"),
             (str(b["loop"]), "symbolic link loop"), (str(b["binary"]), "not UTF-8"),
             (str(b["file"] / "params.yaml"), "not a folder")]
    if os.geteuid() != 0:
        cases.append((str(b["unreadable"] / "params.yaml"), "permission denied"))
    return cases


@pytest.mark.parametrize("command", ["run", "status", "params", "predict", "export"])
def test_bad_params_file_is_one_sentence(command, bad, capsys):
    extra = {"compare": ["latest"], "predict": [str(bad["folder"])], "export": ["--out", str(bad["folder"] / "x")]}
    for path, must in _params_cases(bad):
        line = _check([command, *extra.get(command, []), "--params", path, "--cache-dir", str(bad["good"])],
                      capsys, must)
        assert os.path.basename(path) in line


@pytest.mark.parametrize("command", ["run", "status", "params", "show", "backbones", "compare", "predict",
                                     "export"])
def test_bad_cache_dir_is_one_sentence(command, bad, capsys):
    extra = {"compare": ["latest"], "predict": [str(bad["folder"])], "export": ["--out", str(bad["folder"] / "x")],
             "run": ["data"]}
    for where, must in ((bad["file"], "is a file"), (bad["loop"], "symbolic link loop"),
                        (bad["file"] / "sub", "not a folder")):
        _check([command, *extra.get(command, []), "--params", "/dev/null", "--cache-dir", str(where)]
               if command not in ("show", "backbones") else [command, "--cache-dir", str(where)], capsys, must)


@pytest.mark.parametrize("path_kind,must", [("missing", "not a folder"), ("file", "not a folder"),
                                           ("loop", "not a folder")])
def test_bad_data_path_is_one_sentence(path_kind, must, bad, capsys):
    opts = ["--params", "/dev/null", "-S", "data.source=folder", "-S", f"data.path={bad[path_kind]}",
            "--cache-dir", str(bad["good"])]
    _check(["run", "data", *opts], capsys, must)
    # `status` answers (the data stage is not up to date) rather than refusing.
    code, err = _answer(["status", *opts], capsys)
    assert code == 0 and not err


def test_predict_and_export_without_a_run_name_the_cache_dir(bad, capsys):
    """The hint to train names the --cache-dir given (it used to be left out), and says
    'missing' once."""
    for argv in (["predict", str(bad["folder"])], ["export", "--out", str(bad["folder"] / "new")]):
        line = _check([*argv, "--params", "/dev/null", "--cache-dir", str(bad["good"])], capsys,
                      f"run heads --params /dev/null --cache-dir {bad['good']}")
        assert "missing: missing" not in line and "features (missing)" in line


def test_export_out_refuses_a_file_a_full_folder_and_an_unwritable_place(bad, capsys, tmp_path):
    """`export --out` checks, on `export._start` itself (the command reaches them only with a
    trained run; `test_integrity` covers that path end to end)."""
    from pipeline.errors import UserError
    from pipeline.predict.export import _start

    for out, must in ((bad["file"], "is a file"), (bad["folder"], "already holds files"),
                      (Path("/proc/pipeline-export-test"), "cannot be written"),
                      (bad["loop"], "symbolic link")):
        with pytest.raises(UserError, match=must):
            _start(out, force=False)
    work = _start(bad["folder"], force=True)     # --force: allowed, built beside it
    assert work.parent == bad["folder"].parent and work.name.startswith(".a-folder.export-")
    assert (bad["folder"] / "x.txt").exists()    # nothing replaced until the export is whole
    work.rmdir()


def test_predict_out_a_folder_is_one_sentence(bad, capsys):
    from pipeline.errors import describe_os_error

    try:
        bad["folder"].write_text("x")   # what `predict --out FOLDER` does
    except OSError as e:
        line = describe_os_error(e)
    assert "is a folder" in line and str(bad["folder"]) in line


def test_unexpected_failure_prints_a_sentence_and_logs_the_traceback(tmp_path, capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "dag", boom)
    code, err = _answer(["dag", "--cache-dir", str(tmp_path)], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    log = Path(lines[0].split("the full traceback is in ", 1)[1].split(";", 1)[0])
    assert log.parent == tmp_path / "logs" and "RuntimeError: a bug" in log.read_text()


def test_real_interpreter_prints_no_traceback(bad):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pipeline", "status", "--params", str(bad["binary"]),
                          "--cache-dir", str(bad["good"])], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
