"""Tune: spec checks, random-search determinism, the TPE rebuild from the store, resuming
(with a fake trainer), and one real tiny search end to end."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from flaxlstm import cli
from flaxlstm.errors import InputError
from flaxlstm.search import runner, searchers, trial_store, tune_file

REPO = pathlib.Path(__file__).resolve().parents[2]

SPACE = {
  "model.hidden_sizes": {"choice": [(8,), (16,), (8, 8)]},
  "model.dropout": {"uniform": [0.0, 0.5]},
  "train.learning_rate": {"loguniform": [1e-4, 1e-2]},
  "train.batch_size": {"int": [16, 64], "step": 16},
  "data.lookback": {"int": [8, 200], "log": True},
}


def _spec(**changes) -> dict:
  return {"config": "base.py", "space": SPACE, "trials": 5} | changes


def _write_tune(path: pathlib.Path, spec: dict) -> str:
  path.write_text(f"def get_tune():\n  return {spec!r}\n")
  return str(path)


def test_parse_fills_defaults_and_snaps_int_ranges_to_the_step():
  tune = tune_file.parse(_spec(space={"train.batch_size": {"int": [16, 70], "step": 16}}))
  assert (tune.metric, tune.algorithm, tune.seed, tune.overrides) == ("val_mse", "tpe", 0, ())
  assert tune.space["train.batch_size"] == tune_file.Dist("int", low=16, high=64, step=16)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"space": {}}, "'space' must be a non-empty dict"),
    ({"spaces": {}}, r"unknown tune keys \['spaces'\]"),
    ({"config": ""}, "'config' must name the base experiment"),
    ({"overrides": ["train.max_steps"]}, "'overrides' must be a list of 'key=value'"),
    (
      {"space": {"train.lr": {"uniform": [0, 1]}}},
      "unknown config key 'train.lr' \\(did you mean 'train.learning_rate'",
    ),
    ({"space": {"seed": {"int": [0, 9]}}}, "searching 'seed' only fits noise"),
    (
      {"overrides": ["model.dropout=0.1"], "space": {"model.dropout": {"uniform": [0, 1]}}},
      "'model.dropout' is also fixed in 'overrides'",
    ),
    ({"space": {"model.dropout": [0.0, 0.1]}}, "must be a dict with exactly one of"),
    ({"space": {"model.dropout": {"uniform": [0, 1], "choice": [0.1]}}}, "exactly one of"),
    (
      {"space": {"model.dropout": {"uniform": [0, 0.5], "step": 0.1}}},
      r"unknown options \['step'\] for 'uniform'",
    ),
    ({"space": {"model.dropout": {"choice": []}}}, "'choice' must be a non-empty list"),
    ({"space": {"model.dropout": {"choice": [0.1, 0.10]}}}, "duplicate values"),
    ({"space": {"model.dropout": {"uniform": [0.5, 0.1]}}}, "low < high"),
    ({"space": {"model.dropout": {"uniform": [0.1]}}}, r"must be \[low, high\]"),
    ({"space": {"train.learning_rate": {"loguniform": [0, 1e-2]}}}, "needs low > 0"),
    ({"space": {"train.batch_size": {"int": [16.0, 64]}}}, "ints with low < high"),
    ({"space": {"train.batch_size": {"uniform": [16, 64]}}}, "holds int values, 'uniform'"),
    ({"space": {"model.hidden_sizes": {"int": [8, 64]}}}, "holds tuple values"),
    ({"space": {"train.batch_size": {"int": [16, 64], "step": 0}}}, "'step' must be an int"),
    (
      {"space": {"train.batch_size": {"int": [16, 64], "step": 16, "log": True}}},
      "'log' needs low >= 1 and step 1",
    ),
    ({"trials": 0}, "'trials' must be an int >= 1"),
    ({"metric": "test_mse"}, "never a test metric"),
    ({"algorithm": "grid"}, "'algorithm' must be one of"),
    ({"seed": -1}, "'seed' must be an int >= 0"),
  ],
)
def test_parse_rejects_bad_specs(changes, message):
  with pytest.raises(InputError, match=message):
    tune_file.parse(_spec(**changes))


def test_random_search_is_a_function_of_seed_and_trial_number():
  tune = tune_file.parse(_spec(algorithm="random", seed=7))
  first = [searchers.random_params(tune, i) for i in range(20)]
  # Again, and in a longer search: the same trials (a resumed search proposes these).
  assert [searchers.random_params(tune, i) for i in range(20)] == first
  longer = tune_file.parse(_spec(algorithm="random", seed=7, trials=50))
  assert [searchers.random_params(longer, i) for i in range(20)] == first
  other = tune_file.parse(_spec(algorithm="random", seed=8))
  assert searchers.random_params(other, 0) != first[0]
  for p in first:
    assert p["model.hidden_sizes"] in {(8,), (16,), (8, 8)}
    assert 0.0 <= p["model.dropout"] <= 0.5
    assert 1e-4 <= p["train.learning_rate"] <= 1e-2
    assert p["train.batch_size"] in {16, 32, 48, 64}
    assert isinstance(p["data.lookback"], int) and 8 <= p["data.lookback"] <= 200
  assert len({p["train.batch_size"] for p in first}) > 1


def test_tpe_rebuilds_its_study_from_the_store():
  tune = tune_file.parse(_spec())
  search = searchers.make_search(tune, 0)
  trials = [trial_store.Trial(n, search.propose(n)) for n in range(4)]
  values = [0.5, None, 0.2, 0.9]  # trial 1 failed
  for trial, value in zip(trials, values):
    search.report(trial, value)

  # A restart reports the recorded trials to a fresh study instead of re-running them.
  resumed = searchers.make_search(tune, len(trials))
  for trial, value in zip(trials, values):
    resumed.report(trial, value)
  states = [t.state.name for t in resumed.study.trials]
  assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
  assert resumed.study.best_value == 0.2
  best = searchers.from_optuna(tune.space, resumed.study.best_trial.params)
  assert best == trials[2].params
  # The same seed proposes the same first trial; the resumed sampler is seeded apart, so it
  # does not propose trial 0 again (TPE's start-up trials are random draws from its seed).
  assert searchers.make_search(tune, 0).propose(0) == trials[0].params
  proposal = resumed.propose(4)
  assert proposal not in [t.params for t in trials]
  assert set(proposal) == set(SPACE) and proposal["model.hidden_sizes"] in {(8,), (16,), (8, 8)}


def test_tpe_without_optuna_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
  with pytest.raises(InputError, match=r"pip install 'flaxlstm\[tune\]'"):
    searchers.make_search(tune_file.parse(_spec()), 0)


def test_store_round_trips_trials_and_refuses_another_search(tmp_path):
  tune = tune_file.parse(_spec(algorithm="random"))
  assert trial_store.open_store(tune, tmp_path / "w") == []
  trials = [trial_store.Trial(n, searchers.random_params(tune, n)) for n in range(3)]
  for trial in trials:
    trial_store.record_trial(tmp_path / "w", trial)
  # Tuples (stored as JSON lists) come back as the space's values.
  assert trial_store.open_store(tune, tmp_path / "w") == trials
  # More trials extend the search; another space or seed is another search.
  assert (
    trial_store.open_store(tune_file.parse(_spec(algorithm="random", trials=9)), tmp_path / "w")
    == trials
  )
  with pytest.raises(InputError, match="holds a search with another seed"):
    trial_store.open_store(tune_file.parse(_spec(algorithm="random", seed=1)), tmp_path / "w")
  other = dict(SPACE, **{"model.dropout": {"uniform": [0.0, 0.3]}})
  with pytest.raises(InputError, match="another space"):
    trial_store.open_store(tune_file.parse(_spec(algorithm="random", space=other)), tmp_path / "w")


def test_dry_run_and_bad_files(tiny, tmp_path, capsys):
  path = _write_tune(
    tmp_path / "t.py",
    {
      "config": tiny["exp"],
      "overrides": ["train.max_steps=10"],
      "space": SPACE,
      "trials": 3,
      "algorithm": "random",
    },
  )
  workdir = tmp_path / "runs"
  assert cli.main(["tune", path, "--workdir", str(workdir), "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and f"--workdir {workdir}/trial_002" in lines[2]
  assert "train --quiet --config" in lines[0] and "--config.train.max_steps=10" in lines[0]
  assert not workdir.exists()  # a dry run writes nothing
  assert cli.main(["tune", path, "--dry-run", "--trials", "0"]) == 2
  assert "'trials' must be an int >= 1" in capsys.readouterr().err

  tpe = _write_tune(tmp_path / "tpe.py", {"config": tiny["exp"], "space": SPACE, "trials": 4})
  assert cli.main(["tune", tpe, "--workdir", str(workdir), "--dry-run"]) == 0
  assert "4 more trials, proposed by TPE" in capsys.readouterr().out
  bad = _write_tune(tmp_path / "bad.py", {"config": tiny["exp"], "space": {"model.lr": {}}})
  assert cli.main(["tune", bad]) == 2
  assert "error: tune file" in capsys.readouterr().err
  missing = _write_tune(tmp_path / "m.py", {"config": "nope.py", "space": SPACE, "trials": 1})
  assert cli.main(["tune", missing]) == 2
  assert "config file 'nope.py' does not exist" in capsys.readouterr().err


def _fake_train_runs(trained: list[list[str]], crash: set[str]):
  """Stands in for sweep.train_runs: "trains" instantly, val_mse from the values."""

  def train_runs(config, runs, workdir, children, *, parallel=1, quiet=False, population=False):
    del config, children, parallel, quiet, population
    trained.append([r.name for r in runs])
    failures = {}
    for run in runs:
      if run.name in crash:
        failures[run.name] = "exit 1: error: boom"
        continue
      mse = (run.setting["model.dropout"] - 0.2) ** 2 + math.log10(
        run.setting["train.learning_rate"] / 1e-3
      ) ** 2
      metrics = {
        "val": {"mse": mse, "mae": mse},
        "test": {"mse": 2 * mse, "mae": mse},
        "params_count": 10,
        "epochs": 1,
        "steps": 5,
        "train_wall_time_s": 0.1,
      }
      (workdir / run.name).mkdir(parents=True)
      (workdir / run.name / "metrics.json").write_text(json.dumps(metrics))
    return failures

  return train_runs


def test_tpe_search_survives_a_crash_and_resumes_without_duplicates(
  tiny, tmp_path, monkeypatch, capsys
):
  trained = []
  monkeypatch.setattr(runner, "train_runs", _fake_train_runs(trained, {"trial_001"}))
  path = _write_tune(tmp_path / "t.py", {"config": tiny["exp"], "space": SPACE, "trials": 3})
  workdir = tmp_path / "runs"
  args = ["tune", path, "--workdir", str(workdir)]
  assert cli.main(args + ["--parallel", "2"]) == 0
  out, err = capsys.readouterr()
  assert trained == [["trial_000", "trial_001"], ["trial_002"]]  # rounds of 2
  assert "FAILED  trial_001: exit 1: error: boom" in out and "1 of 3 trials failed" in err
  assert (workdir / "failures.txt").read_text() == "trial_001\texit 1: error: boom\n"

  # A kill after recording trial 3 but before it finished: the rerun trains it with its
  # recorded values, retries the failed trial 1, and proposes only trial 4.
  tune = tune_file.load_tune(path, trials=5)
  killed = trial_store.Trial(3, searchers.random_params(tune, 99))
  trial_store.record_trial(workdir, killed)
  trained.clear()
  monkeypatch.setattr(runner, "train_runs", _fake_train_runs(trained, set()))
  assert cli.main(args + ["--trials", "5", "--quiet"]) == 0
  assert trained == [["trial_001"], ["trial_003"], ["trial_004"]]
  assert not (workdir / "failures.txt").exists()
  trials = trial_store.read_trials(tune, workdir)
  assert trials[3] == killed and len(trials) == 5
  assert len({json.dumps(trial_store.jsonable(t.params)) for t in trials}) == 5

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == [f"trial_00{i}" for i in range(5)]
  assert {r["status"] for r in rows} == {"ok"}
  best = json.loads((workdir / "best.json").read_text())
  assert best["value"] == min(float(r["val_mse"]) for r in rows)
  assert float(rows[best["trial"]]["val_mse"]) == best["value"]


@pytest.mark.slow
def test_tiny_random_search_end_to_end(tiny, tmp_path, capsys):
  # Seed 2 draws lookbacks 1000, 12, 24: trial 0 fails in its own process (a valid
  # config, but longer than the series), the search goes on, and trials 1 and 2 train
  # (10 steps each).
  spec = {
    "config": tiny["exp"],
    "overrides": ["train.max_steps=10"],
    "space": {
      "data.lookback": {"choice": [12, 24, 1000]},
      "train.learning_rate": {"loguniform": [1e-3, 1e-2]},
    },
    "trials": 3,
    "algorithm": "random",
    "seed": 2,
  }
  tune = tune_file.parse(spec)
  assert [searchers.random_params(tune, i)["data.lookback"] for i in range(3)] == [1000, 12, 24]
  path = _write_tune(tmp_path / "tiny_tune.py", spec)
  workdir = tmp_path / "runs"
  args = ["tune", path, "--workdir", str(workdir)]
  assert cli.main(args) == 0
  out, err = capsys.readouterr()
  assert "[1/3] FAILED  trial_000: exit 2: error: series too short" in out
  assert "1 of 3 trials failed" in err
  good = ["trial_001", "trial_002"]
  metrics = {n: json.loads((workdir / n / "metrics.json").read_text()) for n in good}

  with open(workdir / "results.csv") as f:
    rows = {r["name"]: r for r in csv.DictReader(f)}
  assert [rows[n]["status"] for n in ("trial_000", *good)] == ["failed", "ok", "ok"]
  for n in good:
    assert float(rows[n]["val_mse"]) == metrics[n]["val"]["mse"]
    assert float(rows[n]["test_mse"]) == metrics[n]["test"]["mse"]
    assert int(rows[n]["params_count"]) > 0
    assert (
      float(rows[n]["train.learning_rate"])
      == searchers.random_params(tune, int(n[-1]))["train.learning_rate"]
    )
  winner = min(good, key=lambda n: metrics[n]["val"]["mse"])
  best = json.loads((workdir / "best.json").read_text())
  assert best["name"] == winner and best["value"] == metrics[winner]["val"]["mse"]
  params = searchers.random_params(tune, int(winner[-1]))
  assert best["overrides"] == ["train.max_steps=10"] + [
    f"{k}={runner.format_value(v)}" for k, v in params.items()
  ]
  assert best["command"].startswith(
    f"flaxlstm train --config {tiny['exp']} --workdir {workdir}/best --config.train.max_steps=10"
  )
  table = (workdir / "results.md").read_text().splitlines()
  assert table[2].startswith("| rank | trial | data.lookback | train.learning_rate | val_mse")
  assert table[4].startswith(f"| 1 | {winner} |")
  assert "trial_000 (failed)" in table[-1]
  assert (workdir / "trials.png").stat().st_size > 0

  # Rerun: finished trials are skipped (metrics untouched), the failed one is retried.
  stamps = [(workdir / n / "metrics.json").stat().st_mtime_ns for n in good]
  assert cli.main(args + ["--quiet"]) == 0
  assert [(workdir / n / "metrics.json").stat().st_mtime_ns for n in good] == stamps
  assert "trial_000\texit 2: error: series too short" in (workdir / "failures.txt").read_text()
  assert cli.main(args + ["--dry-run"]) == 0
  dry = capsys.readouterr().out.strip().splitlines()
  assert [line.startswith("# done: ") for line in dry] == [False, True, True]


def test_shipped_tune_files_load(monkeypatch):
  monkeypatch.chdir(REPO)  # base configs are named relative to the repository
  files = sorted((REPO / "experiments" / "tune").glob("*.py"))
  assert "ett_univariate" in {f.stem for f in files}
  for f in files:
    tune = tune_file.load_tune(f)
    assert tune.trials >= 10 and tune.metric.startswith("val_")


def test_a_value_no_trial_can_take_is_refused_before_the_search(tiny, tmp_path, capsys):
  path = _write_tune(
    tmp_path / "t.py",
    {"config": tiny["exp"], "trials": 3, "space": {"model.dropout": {"choice": [0.1, 1.5]}}},
  )
  workdir = tmp_path / "runs"
  assert cli.main(["tune", path, "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "space 'model.dropout' value 1.5: config key 'model.dropout'" in err
  assert err.count("\n") == 1 and not workdir.exists()


@pytest.mark.parametrize(
  "name, content, fragment",
  [
    ("tune.json", b'{"config": ', "is not valid JSON"),
    ("tune.json", b"\xff\xfe", "is not UTF-8 text"),
    ("tune.json", b"[]", "is not a JSON object"),
    ("trials.jsonl", b'{"trial": 0, "params": \xff}\n', "is not a trial of this search"),
  ],
)
def test_a_damaged_search_store_is_one_line(tiny, tmp_path, capsys, name, content, fragment):
  path = _write_tune(
    tmp_path / "t.py", {"config": tiny["exp"], "space": SPACE, "trials": 2, "algorithm": "random"}
  )
  workdir = tmp_path / "runs"
  trial_store.open_store(tune_file.load_tune(path), workdir)  # a search that has begun
  (workdir / name).write_bytes(content)
  before = sorted(p.name for p in workdir.iterdir())
  assert cli.main(["tune", path, "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
  assert "Traceback" not in err
  assert sorted(p.name for p in workdir.iterdir()) == before


def _worker(path, workdir, journal, *extra):
  cmd = [sys.executable, "-m", "flaxlstm.cli", "tune", path, "--workdir", str(workdir)]
  return subprocess.Popen(
    cmd + ["--storage", str(journal), "--population", "--parallel", "2", "--quiet", *extra],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _study_trials(journal):
  import optuna

  storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
  (summary,) = storage.get_all_studies()
  return optuna.load_study(study_name=summary.study_name, storage=storage).trials


@pytest.mark.slow
def test_workers_share_one_journal_and_retry_a_killed_workers_trial(tiny, tmp_path):
  pytest.importorskip("optuna")
  spec = {
    "config": tiny["exp"],
    "overrides": ["train.max_steps=20", "train.eval_every_steps=5"],
    "space": {"train.learning_rate": {"loguniform": [1e-3, 1e-2]}},
    "trials": 4,
    "algorithm": "random",
  }
  tune = tune_file.parse(spec)
  path = _write_tune(tmp_path / "shared.py", spec)
  workdir, journal = tmp_path / "runs", tmp_path / "study.journal"

  def wait_for(p):
    deadline = time.time() + 300
    while not p.exists() and time.time() < deadline:
      time.sleep(0.1)
    assert p.exists(), p

  # Two workers on one journal, each training rounds of 2 trials as a population. Once all
  # 4 trials are training, worker A is killed: B finds A's heartbeats stale, fails each of
  # A's trials once and retrains its values in its folder; no trial is lost or trained twice.
  a = _worker(path, workdir, journal, "--stale-after", "3")
  b = _worker(path, workdir, journal, "--stale-after", "3")
  for i in range(4):
    wait_for(workdir / "heartbeats" / f"trial_00{i}")
  a.send_signal(signal.SIGKILL)
  a.wait()
  assert b.wait(timeout=600) == 0, b.stdout.read()

  trials = _study_trials(journal)
  stale = [t for t in trials if t.user_attrs.get("flaxlstm_stale")]
  assert len(stale) == 2 and {t.state.name for t in stale} == {"FAIL"}
  done = [t for t in trials if t.state.name == "COMPLETE"]
  numbers = sorted(t.user_attrs.get("flaxlstm_number", t.number) for t in done)
  assert numbers == [0, 1, 2, 3]  # each trial once, the retries in their originals' place
  for t in done:
    number = t.user_attrs.get("flaxlstm_number", t.number)
    expected = searchers.random_params(tune, number)["train.learning_rate"]
    assert t.params["train.learning_rate"] == expected  # a local random search's values
    metrics = json.loads((workdir / f"trial_{number:03d}" / "metrics.json").read_text())
    assert t.value == metrics["val"]["mse"]
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == [f"trial_00{i}" for i in range(4)]
  assert {r["status"] for r in rows} == {"ok"}


def test_a_shared_tpe_search_in_an_rdb_fills_its_budget_once(tiny, tmp_path, monkeypatch, capsys):
  pytest.importorskip("optuna")
  trained = []
  monkeypatch.setattr(runner, "train_runs", _fake_train_runs(trained, {"trial_002"}))
  path = _write_tune(tmp_path / "t.py", {"config": tiny["exp"], "space": SPACE, "trials": 5})
  workdir, url = tmp_path / "runs", f"sqlite:///{tmp_path / 'study.db'}"
  args = ["tune", path, "--workdir", str(workdir), "--storage", url, "--parallel", "2"]
  assert cli.main(args) == 0
  assert trained == [["trial_000", "trial_001"], ["trial_002", "trial_003"], ["trial_004"]]
  assert "1 of 5 trials failed" in capsys.readouterr().err
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok"]
  # A second worker on the full study trains nothing; another search in the same database
  # is another study.
  assert cli.main(args + ["--quiet"]) == 0 and len(trained) == 3
  other = tmp_path / "other"
  assert cli.main(["tune", path, "--workdir", str(other), "--storage", str(tmp_path)]) == 2
  assert "not a file in an existing directory" in capsys.readouterr().err
  assert not other.exists()  # refused before anything is written


def test_a_refused_shared_search_is_one_line_and_creates_no_storage(tiny, tmp_path, capsys):
  pytest.importorskip("optuna")
  path = _write_tune(
    tmp_path / "t.py", {"config": tiny["exp"], "space": SPACE, "trials": 2, "algorithm": "random"}
  )

  def refused(workdir, journal) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["tune", path, "--workdir", str(workdir), "--storage", str(journal)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    return captured.err

  # An unwritable journal path (a link into a missing folder: unwritable even for root).
  (tmp_path / "link").symlink_to(tmp_path / "no" / "such" / "folder")
  err = refused(tmp_path / "runs", tmp_path / "link")
  link = tmp_path / "link"
  assert (
    err == f"error: --storage {link}: cannot write the journal file (No such file or directory)\n"
  )
  # Refused by the workdir, before the journal is created: another search lives there...
  other = tmp_path / "other"
  other.mkdir()
  (other / "tune.json").write_text('{"config": "another"}')
  assert "holds a search with another config" in refused(other, tmp_path / "s.journal")
  # ... it is a file, or it cannot be created: the journal created for it is removed.
  (tmp_path / "file").write_text("")
  assert "--workdir" in refused(tmp_path / "file", tmp_path / "s.journal")
  assert "cannot create the search store" in refused(
    tmp_path / "link" / "w", tmp_path / "s.journal"
  )


def test_a_tune_file_that_exits_is_refused(tmp_path, capsys):
  path = tmp_path / "exits.py"
  path.write_text("import sys\n\nsys.exit(0)\n")
  assert cli.main(["tune", str(path), "--dry-run"]) == 2
  assert capsys.readouterr().err == (
    f"error: tune file '{path}' called sys.exit(0) while it was imported; it must define its "
    "function and return\n"
  )
