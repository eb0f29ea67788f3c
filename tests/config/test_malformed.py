"""Malformed inputs through the real CLI: one line `error: ...`, exit code 2, nothing written.

The corpus lives in tests/data/malformed/: small data and config files, each valid but for
one defect, and cases.json, which lists every case as

  {"name", "config": file in that folder, a packaged recipe's name, or null (= base.py,
   the valid experiment),
   "args": extra `flaxlstm train` arguments, "fragment": expected part of the message,
   "xfail": optional reason (a known library problem; remove the key once it is fixed)}

`{dir}` in config/args/fragment stands for the corpus folder, `{workdir}` for the run
directory. The files are committed; make_corpus.py regenerates the data files. Every case
fails before training, so the whole corpus runs in seconds.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from flaxlstm import cli

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "data" / "malformed"
CASES = json.loads((CORPUS / "cases.json").read_text())
# Files used by the harness itself rather than named by a case.
_SUPPORT_FILES = {"cases.json", "make_corpus.py", "base.py", "workdir_cases.json"}


def _params():
  for case in CASES:
    marks = ()
    if case.get("xfail"):
      marks = (pytest.mark.xfail(reason=f"library problem: {case['xfail']}", strict=True),)
    yield pytest.param(case, id=case["name"], marks=marks)


def _expand(text: str, workdir: pathlib.Path) -> str:
  return text.replace("{dir}", str(CORPUS)).replace("{workdir}", str(workdir))


def _listing(folder: pathlib.Path) -> set[str]:
  return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", list(_params()))
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
  cwd = tmp_path / "cwd"  # a stray relative write (e.g. runs/) would land here
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  # Importing the config files must not leave __pycache__ in the corpus either.
  monkeypatch.setattr(sys, "dont_write_bytecode", True)
  workdir = tmp_path / "run"
  name = _expand(case["config"] or "base.py", workdir)
  # A name without a suffix is a packaged recipe's, given as is; files are the corpus'.
  config = CORPUS / name if "." in name else name
  args = [_expand(a, workdir) for a in case["args"]]
  fragment = _expand(case["fragment"], workdir)
  before = _listing(CORPUS)

  code = cli.main(["train", "--config", str(config), "--workdir", str(workdir), "--quiet", *args])

  out, err = capsys.readouterr()
  assert "Traceback" not in out + err
  assert code == 2, f"exit code {code}; stderr: {err!r}"
  assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, (
    f"stderr is not one `error: ` line: {err!r}"
  )
  assert fragment in err, f"expected {fragment!r} in {err!r}"
  assert not workdir.exists(), f"workdir was created: {sorted(_listing(workdir))}"
  assert not any(cwd.iterdir()), f"wrote into the cwd: {sorted(_listing(cwd))}"
  assert _listing(CORPUS) == before, "wrote into the corpus folder"


def test_manifest_is_consistent():
  names = [case["name"] for case in CASES]
  assert len(names) == len(set(names)), "duplicate case names"
  assert len(CASES) - sum(bool(c.get("xfail")) for c in CASES) >= 24
  used = set()
  for case in CASES:
    assert set(case) <= {"name", "config", "args", "fragment", "xfail"}, case["name"]
    assert case["fragment"] and isinstance(case["args"], list), case["name"]
    texts = [case["config"] or "base.py", *case["args"]]
    used.update(name for text in texts for name in _corpus_files_named_in(text))
  files = {p.name for p in CORPUS.iterdir() if p.is_file()}
  assert not files - used - _SUPPORT_FILES - {"valid.csv"}, "files no case uses"


def _corpus_files_named_in(text: str) -> set[str]:
  text = text.split("=", 1)[-1]
  text = text.removeprefix("{dir}/").split(":", 1)[0]
  return {text} if (CORPUS / text).is_file() else set()


def test_base_experiment_and_valid_csv_pass_every_check():
  """The control: without a defect the corpus' base config and data are accepted."""
  from flaxlstm import config as config_lib
  from flaxlstm.data import series

  config = config_lib.load_config(str(CORPUS / "base.py"))
  assert config.data.path == str(CORPUS / "valid.csv")
  data = series.prepare(config_lib.to_spec(config).data)
  assert data.n_rows == 300 and data.feature_names == ("x", "y")
  assert len(data.window_starts("train")) >= config.train.batch_size
