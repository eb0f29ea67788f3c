"""Hostile and damaged run directories through the real CLI (`train`, `evaluate`, `predict`).

The corpus is tests/data/malformed/workdir_cases.json. Each case takes a copy of one small
finished run (or an empty or missing directory), damages it as a careless or hostile user
would, runs one command and checks what README promises:

- nothing executes: a pickle payload planted in the run never runs (it would create
  `{tmp}/EXECUTED`);
- a refused command is one `error:` line, exit 2, and changes nothing: the run's bytes,
  the data file and the scratch folder are as before (a case lists in `changes` and
  `creates` what its command may legitimately write);
- a command that recovers says so in one `warning:` line (`warning`) and exits 0;
- no traceback, nothing written to the working directory.

Case keys: name, damage (ops below), command (CLI arguments), exit, fragment (expected in
the error line), optional workdir ("run" = the copy, default; "empty"; "missing"),
changes (globs of workdir paths that may change), creates (globs under {tmp} that may
appear), warning (expected in a warning line; without it no warning may be printed).
Placeholders: {workdir} the run, {data} its data file, {config} its pristine config.json
(a copy outside the run), {tmp} a scratch folder.

Damage ops: write/append (text), write_hex/append_hex (bytes), remove (glob), mkdir,
truncate (glob: every file to a third), flip (glob: one bit in the middle of the first
file of each matching folder's data), json_set (key -> value in a JSON file; a dotted key
walks into objects), payload (a pickle whose loading creates {tmp}/EXECUTED), data_change
(one value of the data file), data_remove, symlink_data (a link to the data file),
copy_data (a copy of it), hold_lock (another holder of the workdir's lock while the command
runs), mkfifo, symlink/hardlink (to `target`), sparse (the file grown to `size` bytes of
zeros, without using the disk).
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import pathlib
import pickle
import shutil
import stat
import sys

import pytest

from flaxlstm import cli
from flaxlstm.train import lock as lock_lib

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "data" / "malformed"
CASES = json.loads((CORPUS / "workdir_cases.json").read_text())
_OPS = {
  "write",
  "append",
  "write_hex",
  "append_hex",
  "remove",
  "mkdir",
  "truncate",
  "flip",
  "json_set",
  "payload",
  "data_change",
  "data_remove",
  "symlink_data",
  "copy_data",
  "hold_lock",
  "mkfifo",
  "symlink",
  "hardlink",
  "sparse",
}


class _Payload:
  """Unpickling this runs a shell command: what a shared run directory could carry."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def finished_run(tiny, tmp_path_factory):
  """One small finished run (latest and best checkpoints at steps 10 and 20)."""
  root = tmp_path_factory.mktemp("corpus_template")
  data = root / "series.csv"
  shutil.copy(tiny["csv"], data)
  workdir = root / "run"
  code = cli.main(
    [
      "train",
      "--config",
      tiny["exp"],
      "--workdir",
      str(workdir),
      "--quiet",
      f"--config.data.path={data}",
      "--config.train.max_steps=20",
      "--config.train.eval_every_steps=10",
    ]
  )
  assert code == 0
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["10", "20"]
  return workdir


def _snapshot(folder: pathlib.Path) -> dict[str, str]:
  """relative path -> content hash ("dir" for folders, "link: target" for links, "special"
  for FIFOs and the like, which are never opened)."""
  out = {}
  if not folder.exists():
    return out
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = pathlib.Path(root) / name
      rel = str(path.relative_to(folder))
      mode = path.lstat().st_mode
      if stat.S_ISLNK(mode):
        out[rel] = f"link: {os.readlink(path)}"
      elif stat.S_ISDIR(mode):
        out[rel] = "dir"
      elif not stat.S_ISREG(mode):
        out[rel] = "special"
      else:
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def _changed(before: dict, after: dict) -> set[str]:
  return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def _allowed(path: str, globs: list[str]) -> bool:
  return any(fnmatch.fnmatch(path, g) or path == g.rstrip("/*") for g in globs)


def _expand(text: str, places: dict[str, str]) -> str:
  for key, value in places.items():
    text = text.replace("{" + key + "}", value)
  return text


def _damage(op: dict, workdir: pathlib.Path, places: dict[str, str]) -> None:
  kind = op["op"]
  raw = _expand(op.get("path", ""), places)
  path = pathlib.Path(raw) if os.path.isabs(raw) else workdir / raw
  if kind == "write":
    path.write_text(op["text"])
  elif kind == "append":
    with open(path, "a") as f:
      f.write(op["text"])
  elif kind == "write_hex":
    path.write_bytes(bytes.fromhex(op["hex"]))
  elif kind == "append_hex":
    with open(path, "ab") as f:
      f.write(bytes.fromhex(op["hex"]))
  elif kind == "remove":
    for p in glob.glob(str(path)):
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  elif kind == "mkdir":
    path.mkdir()
  elif kind == "truncate":
    files = [p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p)]
    assert files, op
    for p in files:
      os.truncate(p, os.path.getsize(p) // 3)
  elif kind == "flip":
    # One file per matching folder: enough to make every matched step damaged.
    files = sorted(p for p in glob.glob(str(path)) if os.path.isfile(p))
    assert files, op
    first_per_folder = {}
    for p in files:
      first_per_folder.setdefault(os.path.dirname(p), p)
    for p in first_per_folder.values():
      data = bytearray(pathlib.Path(p).read_bytes())
      data[len(data) // 2] ^= 0x01
      pathlib.Path(p).write_bytes(bytes(data))
  elif kind == "json_set":
    obj = json.loads(path.read_text())
    *parents, last = op["key"].split(".")
    inner = obj
    for key in parents:
      inner = inner[key]
    inner[last] = _expand(op["value"], places) if isinstance(op["value"], str) else op["value"]
    path.write_text(json.dumps(obj))
  elif kind == "payload":
    path.write_bytes(pickle.dumps(_Payload(places["tmp"] + "/EXECUTED")))
  elif kind == "data_change":
    data = pathlib.Path(places["data"])
    lines = data.read_text().splitlines()
    head, _, value = lines[-1].rpartition(",")
    lines[-1] = f"{head},{float(value) + 1.0}"
    data.write_text("\n".join(lines) + "\n")
  elif kind == "data_remove":
    os.remove(places["data"])
  elif kind == "symlink_data":
    os.symlink(places["data"], path)
  elif kind == "copy_data":
    shutil.copy(places["data"], path)
  elif kind == "mkfifo":
    os.mkfifo(path)
  elif kind in ("symlink", "hardlink"):
    target = _expand(op["target"], places)
    (os.symlink if kind == "symlink" else os.link)(target, path)
  elif kind == "sparse":
    with open(path, "ab") as f:
      f.truncate(op["size"])
  elif kind != "hold_lock":
    raise AssertionError(f"unknown op {kind}")


def _prepare(case: dict, finished_run: pathlib.Path, tmp: pathlib.Path):
  """The case's workdir, data copy and placeholders, before the damage."""
  data = tmp / "series.csv"
  shutil.copy(json.loads((finished_run / "config.json").read_text())["data"]["path"], data)
  workdir = tmp / "run"
  config = json.loads((finished_run / "config.json").read_text())
  config["data"]["path"] = str(data)  # the copy: a case may change or remove it
  if "_run" in config:
    config["_run"]["data"]["path"] = str(data)
  (tmp / "config.json").write_text(json.dumps(config, indent=2))
  kind = case.get("workdir", "run")
  if kind == "run":
    shutil.copytree(finished_run, workdir, symlinks=True)
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
  elif kind == "empty":
    workdir.mkdir()
  places = {
    "workdir": str(workdir),
    "data": str(data),
    "config": str(tmp / "config.json"),
    "tmp": str(tmp),
  }
  return workdir, places


def test_corpus_is_consistent():
  names = [c["name"] for c in CASES]
  assert len(names) == len(set(names)) and len(CASES) >= 50
  for c in CASES:
    assert set(c) <= {
      "name",
      "damage",
      "command",
      "exit",
      "fragment",
      "workdir",
      "changes",
      "creates",
      "warning",
    }, c["name"]
    assert {op["op"] for op in c["damage"]} <= _OPS, c["name"]
    assert c["exit"] in (0, 2) and (c["exit"] == 0 or c["fragment"]), c["name"]
  commands = {c["command"][0] for c in CASES}
  assert commands == {"train", "evaluate", "predict"}


def _params():
  # A case whose command trains is slow (compiles, trains, scores); the others refuse or
  # read in about a second.
  for case in CASES:
    slow = case["command"][0] == "train" and case["exit"] == 0
    yield pytest.param(case, id=case["name"], marks=(pytest.mark.slow,) if slow else ())


@pytest.mark.parametrize("case", list(_params()))
def test_hostile_workdir(case, finished_run, tmp_path, capsys, monkeypatch):
  tmp = tmp_path / "case"
  tmp.mkdir()
  cwd = tmp_path / "cwd"  # a stray relative write would land here
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(sys, "dont_write_bytecode", True)
  workdir, places = _prepare(case, finished_run, tmp)
  for op in case["damage"]:
    _damage(op, workdir, places)
  args = [_expand(a, places) for a in case["command"]]
  before_run, before_tmp = _snapshot(workdir), _snapshot(tmp)
  capsys.readouterr()

  holder = None
  if any(op["op"] == "hold_lock" for op in case["damage"]):
    holder = lock_lib.Lock(workdir, "a test holding the lock").acquire()
  try:
    code = cli.main(args)
  finally:
    if holder is not None:
      holder.release(keep=False)

  out, err = capsys.readouterr()
  lines = err.splitlines()
  assert "Traceback" not in out + err, err
  assert not (tmp / "EXECUTED").exists(), "a pickle from the workdir was executed"
  assert code == case["exit"], f"exit {code}, stderr: {err!r}"
  errors = [line for line in lines if line.startswith("error: ")]
  warnings = [line for line in lines if line.startswith("warning: ")]
  assert len(errors) + len(warnings) == len(lines), f"stray stderr lines: {err!r}"
  if case["exit"]:
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert case["fragment"] in errors[0], f"expected {case['fragment']!r} in {errors[0]!r}"
  else:
    assert not errors, err
  if case.get("warning"):
    assert any(case["warning"] in w for w in warnings), (
      f"expected a warning with {case['warning']!r}: {err!r}"
    )
  else:
    assert not warnings, err

  run_changes = _changed(before_run, _snapshot(workdir))
  unexpected = {p for p in run_changes if not _allowed(p, case.get("changes", []))}
  assert not unexpected, f"the command changed {sorted(unexpected)} in the workdir"
  tmp_changes = _changed(before_tmp, _snapshot(tmp))
  tmp_changes = {p for p in tmp_changes if not p.startswith("run")}
  unexpected = {p for p in tmp_changes if not _allowed(p, case.get("creates", []))}
  assert not unexpected, f"the command wrote {sorted(unexpected)} beside the run"
  assert not any(cwd.iterdir()), f"wrote into the cwd: {os.listdir(cwd)}"
  if case.get("workdir") == "missing" and case["exit"]:
    assert not workdir.exists(), "a refused command created the workdir"


def test_no_code_path_can_unpickle_a_run_file():
  """The structural guarantee behind the pickle cases above: no module under flaxlstm/
  imports a deserializer that can run code, or asks numpy for allow_pickle=True.

  One exception, never on a run's files: `flaxlstm tirex convert` (pretrained/files.py)
  reads a user's PyTorch checkpoint once, and only with torch's restricted loader
  (`weights_only=True`, checked here)."""
  import ast

  package = pathlib.Path(__file__).resolve().parents[2] / "flaxlstm"
  banned = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
    "torch",
  }
  offenders = []
  for path in sorted(package.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      elif isinstance(node, ast.Call):
        names = [
          "allow_pickle"
          for k in node.keywords
          if k.arg == "allow_pickle"
          and not (isinstance(k.value, ast.Constant) and k.value.value is False)
        ]
      where = str(path.relative_to(package))
      if (
        where == "pretrained/files.py"
        and isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
      ):
        weights_only = [k for k in node.keywords if k.arg == "weights_only"]
        if not (weights_only and getattr(weights_only[0].value, "value", None) is True):
          offenders.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
      for name in names:
        if where == "pretrained/files.py" and names == ["torch"]:
          continue  # the converter's restricted loader (above)
        if name.split(".")[0] in banned or name == "allow_pickle":
          offenders.append(f"{where}:{node.lineno}: {name}")
  assert not offenders, offenders
