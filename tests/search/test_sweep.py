"""Sweeps: expansion and names, dry run, SLURM script, and a real tiny sweep end to end."""

from __future__ import annotations

import csv
import math
import os
import pathlib

import jax
import pytest

from flaxlstm import cli
from flaxlstm.errors import InputError
from flaxlstm.recipes import ett
from flaxlstm.search import results, runner
from flaxlstm.search import sweep as sweep_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _write_sweep(path: pathlib.Path, spec: dict) -> str:
  path.write_text(f"def get_sweep():\n  return {spec!r}\n")
  return str(path)


def test_expand_product_zip_and_seeds():
  sweep = sweep_lib.expand(
    {
      "config": "base.py",
      "overrides": ["train.max_steps=10"],
      "grid": {"model.dropout": [0.0, 0.2], "model.hidden_sizes": [(64,), (32, 32)]},
      "zip": {"train.optimizer": ["sgd", "adamw"], "train.learning_rate": [0.05, 1e-3]},
      "seeds": [0, 1],
    }
  )
  assert len(sweep.runs) == 2 * 2 * 2 * 2
  assert sweep.dims == [
    ("model.dropout",),
    ("model.hidden_sizes",),
    ("train.optimizer", "train.learning_rate"),
  ]
  first = sweep.runs[0]
  assert first.name == (
    "model.dropout=0.0,model.hidden_sizes=64,train.optimizer=sgd,train.learning_rate=0.05,seed=0"
  )
  assert first.overrides == (
    "train.max_steps=10",
    "model.dropout=0.0",
    "model.hidden_sizes=64,",
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "seed=0",
  )
  # Zipped keys vary together: sgd always with 0.05, adamw with 0.001.
  pairs = {(r.setting["train.optimizer"], r.setting["train.learning_rate"]) for r in sweep.runs}
  assert pairs == {("sgd", 0.05), ("adamw", 1e-3)}
  names = [r.name for r in sweep.runs]
  assert len(set(names)) == len(names)
  assert "model.hidden_sizes=32-32" in names[-1]
  # Stable: the same spec gives the same names in the same order.
  again = sweep_lib.expand(
    {
      "config": "base.py",
      "overrides": ["train.max_steps=10"],
      "grid": {"model.dropout": [0.0, 0.2], "model.hidden_sizes": [(64,), (32, 32)]},
      "zip": {"train.optimizer": ["sgd", "adamw"], "train.learning_rate": [0.05, 1e-3]},
      "seeds": [0, 1],
    }
  )
  assert [r.name for r in again.runs] == names


def test_expand_defaults_to_one_seed_and_formats_values():
  sweep = sweep_lib.expand({"config": "b.py", "grid": {"data.scale_target": [True, False]}})
  assert [r.name for r in sweep.runs] == [
    "data.scale_target=true,seed=0",
    "data.scale_target=false,seed=0",
  ]
  assert sweep.runs[1].overrides == ("data.scale_target=false", "seed=0")
  only_seeds = sweep_lib.expand({"config": "b.py", "seeds": [3, 4]})
  assert [r.name for r in only_seeds.runs] == ["seed=3", "seed=4"]


@pytest.mark.parametrize(
  "spec, message",
  [
    ({"grid": {"model.dropout": [0.0]}}, "'config'"),
    ({"config": "b.py", "grid": {"model.dropuot": [0.0]}}, "unknown config key"),
    ({"config": "b.py", "grid": {"seed": [0, 1]}}, "with 'seeds'"),
    ({"config": "b.py", "zip": {"model.dropout": [0.0], "train.l1": [0.0, 1.0]}}, "same length"),
    ({"config": "b.py", "grid": {"model.dropout": []}}, "non-empty"),
    ({"config": "b.py", "seeds": [0, 0]}, "duplicates"),
    ({"config": "b.py", "grids": {}}, "unknown sweep keys"),
    ({"config": "b.py", "grid": {"model.dropout": [0.1, 0.10]}}, "two runs get the name"),
  ],
)
def test_expand_rejects_bad_specs(spec, message):
  with pytest.raises(InputError, match=message):
    sweep_lib.expand(spec)


def test_shipped_ablation_sweeps_load():
  files = sorted((REPO / "experiments" / "sweeps").glob("*.py"))
  assert {f.stem for f in files} >= {
    "deep_vs_wide",
    "dropout",
    "regularization",
    "optimizer",
    "target_scaling",
    "init",
  }
  for f in files:
    sweep = sweep_lib.load_sweep(f)
    # The LTSF recipe's validation searches: one seed per variant.
    if f.stem == "ltsf_ett":
      assert sweep.config.endswith("ltsf/ett.py:96") and len(sweep.runs) == 4
      continue
    if f.stem == "ltsf_rate":
      assert sweep.config.endswith("ltsf/ett.py:192") and len(sweep.runs) == 4
      assert {r.setting["data.horizon"] for r in sweep.runs} == {192, 720}
      continue
    if f.stem in ("ltsf_skip", "ltsf_naive_start", "ltsf_width", "ltsf_loss"):
      assert sweep.config.endswith("ltsf/ett.py:96") and len(sweep.runs) in (12, 8, 4)
      assert {r.setting["data.horizon"] for r in sweep.runs} == {96, 192, 336, 720}
      continue
    if f.stem in ("univariate_start", "multivariate_start"):  # every horizon, its lookback
      assert sweep.config.endswith("variate:24") and len(sweep.runs) in (20, 10)
      pairs = {(r.setting["data.horizon"], r.setting["data.lookback"]) for r in sweep.runs}
      assert pairs == {(24, 96), (48, 96), (168, 168), (336, 168), (720, 168)}
      continue
    assert {r.seed for r in sweep.runs} == {0, 1, 2}
    assert sweep.config == "ett"
    # The LSTM ablations ran from the highway's zero start, and still do.
    assert all(set(ett.ZERO_START) <= set(r.overrides) for r in sweep.runs)
  deep = sweep_lib.load_sweep(REPO / "experiments" / "sweeps" / "deep_vs_wide.py")
  widths = [r.setting["model.hidden_sizes"] for r in deep.runs[::3]]
  assert widths[0] == (64, 64, 64, 64) and len(widths[1]) == 1 and widths[1][0] > 64


def test_dry_run_and_slurm(tmp_path, capsys):
  path = _write_sweep(
    tmp_path / "s.py", {"config": "ett", "grid": {"model.dropout": [0.0, 0.2]}, "seeds": [0, 1]}
  )
  workdir = tmp_path / "runs"
  assert cli.main(["sweep", path, "--workdir", str(workdir), "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  assert "-m flaxlstm.cli train --quiet --config ett" in lines[0]
  assert f"--workdir {workdir}/model.dropout=0.2,seed=1" in lines[3]
  assert lines[3].endswith("--config.model.dropout=0.2 --config.seed=1")
  assert not workdir.exists()  # a dry run writes nothing

  assert cli.main(["sweep", path, "--workdir", str(workdir), "--slurm", "--parallel", "2"]) == 0
  script = capsys.readouterr().out
  assert (workdir / "sweep.sbatch").read_text() == script
  assert "#SBATCH --array=0-3%2" in script
  assert 'case "$SLURM_ARRAY_TASK_ID" in' in script
  assert "  3) [ -f " in script and "srun flaxlstm train --quiet" in script
  assert script.count("srun flaxlstm train") == 4


def test_bad_sweep_file_is_an_input_error(tmp_path, capsys):
  path = _write_sweep(tmp_path / "s.py", {"config": "b.py", "grid": {"model.lr": [1]}})
  assert cli.main(["sweep", path, "--dry-run"]) == 2
  assert "error: sweep file" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_sweep_runs_skips_reports_failures_and_aggregates(tiny, tmp_path, capsys):
  # Two good settings and one that fails inside its own subprocess: a lookback longer
  # than the series is a valid config but not for this data.
  path = _write_sweep(
    tmp_path / "tiny_sweep.py",
    {
      "config": tiny["exp"],
      "overrides": ["train.max_steps=10"],
      "grid": {"data.lookback": [12, 24, 1000]},
      "seeds": [0],
    },
  )
  workdir = tmp_path / "runs"
  args = ["sweep", path, "--workdir", str(workdir), "--parallel", "2"]
  assert cli.main(args) == 1
  out, err = capsys.readouterr()
  good = ["data.lookback=12,seed=0", "data.lookback=24,seed=0"]
  bad = "data.lookback=1000,seed=0"
  for name in good:
    assert (workdir / name / "metrics.json").is_file()
  assert not (workdir / bad).exists()  # nothing is written before the data validates
  assert f"FAILED  {bad}" in out and "1 of 3 runs failed" in err
  failures = (workdir / "failures.txt").read_text()
  assert failures.startswith(bad) and "error: series too short" in failures

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == good + [bad]
  assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
  for r in rows[:2]:
    assert float(r["test_mse"]) > 0 and float(r["naive_test_mse"]) > 0
    assert int(r["params_count"]) > 0 and r["seed"] == "0" and r["data.lookback"]
  table = (workdir / "results.md").read_text()
  assert table.splitlines()[0].startswith("| data.lookback | runs | val_mse | test_mse")
  assert "1 of 3 runs have no results" in table
  assert (workdir / "data.lookback.png").stat().st_size > 0

  # Rerun: the finished runs are skipped (their metrics untouched), the bad one fails again.
  stamps = [(workdir / n / "metrics.json").stat().st_mtime_ns for n in good]
  assert cli.main(args + ["--quiet"]) == 1
  assert [(workdir / n / "metrics.json").stat().st_mtime_ns for n in good] == stamps
  assert cli.main(["sweep", path, "--workdir", str(workdir), "--dry-run"]) == 0
  dry = capsys.readouterr().out.strip().splitlines()
  assert [line.startswith("# done: ") for line in dry] == [True, True, False]

  # Aggregation alone works from the files and reports no new failures.
  (workdir / "results.csv").unlink()
  assert cli.main(["sweep", path, "--workdir", str(workdir), "--aggregate-only"]) == 0
  assert (workdir / "results.csv").is_file()


@pytest.mark.parametrize(
  "spec, fragment",
  [
    ({"overrides": ["train.lr=1"]}, "base config"),
    ({"overrides": ["train.max_steps=-3"]}, "base config"),
    ({"grid": {"model.dropout": [0.0, 1.5]}}, "run model.dropout=1.5,seed=0: config key"),
    ({"overrides": ["data.path=/no/such/file.csv"]}, "data file not found"),
  ],
)
def test_every_run_is_validated_before_any_is_launched(tiny, tmp_path, capsys, spec, fragment):
  path = _write_sweep(tmp_path / "s.py", {"config": tiny["exp"], **spec})
  workdir = tmp_path / "runs"
  for mode in ([], ["--dry-run"], ["--slurm"]):
    assert cli.main(["sweep", path, "--workdir", str(workdir), *mode]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep file") and fragment in err and err.count("\n") == 1
    assert not workdir.exists()  # nothing launched, nothing written


def test_slurm_script_works_with_a_space_in_the_workdir(tmp_path, capsys):
  import shlex
  import subprocess

  path = _write_sweep(tmp_path / "s.py", {"config": "ett", "grid": {"model.dropout": [0.0, 0.2]}})
  workdir = tmp_path / "my runs" / "drop out"
  assert cli.main(["sweep", path, "--workdir", str(workdir), "--slurm"]) == 0
  script = (workdir / "sweep.sbatch").read_text()
  # sbatch splits an #SBATCH line at blanks unless quoted, as a shell does.
  output = [line for line in script.splitlines() if line.startswith("#SBATCH --output")][0]
  assert shlex.split(output)[1] == f"--output={workdir}/logs/slurm-%A_%a.out"
  # The case body under bash, with a stand-in srun that records its arguments.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
  (bin_dir / "srun").chmod(0o755)
  record = tmp_path / "args.txt"
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "1", "SRUN_ARGS": str(record)}
  done = subprocess.run(
    ["bash", str(workdir / "sweep.sbatch")], env=env, cwd=REPO, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr
  args = record.read_text().splitlines()
  assert args[args.index("--workdir") + 1] == f"{workdir}/model.dropout=0.2,seed=0"


def test_a_second_runner_on_a_busy_sweep_is_refused(tiny, tmp_path, capsys):
  from flaxlstm.train import lock as lock_lib

  path = _write_sweep(
    tmp_path / "s.py", {"config": tiny["exp"], "overrides": ["train.max_steps=5"]}
  )
  workdir = tmp_path / "runs"
  workdir.mkdir()
  with lock_lib.Lock(workdir, "another sweep runner"):
    assert cli.main(["sweep", path, "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "is in use by pid" in err and err.count("\n") == 1
  assert sorted(p.name for p in workdir.iterdir()) == [lock_lib.LOCK_NAME]


def test_damaged_metrics_of_a_run_are_not_a_result(tmp_path):
  run = runner.Run("seed=0", {}, 0, ("seed=0",))
  (tmp_path / "seed=0").mkdir()
  for text in ('{"val": {"mse": 0.1', "[1]", '{"val": {}, "test": {}}'):
    (tmp_path / "seed=0" / "metrics.json").write_text(text)
    assert not runner.is_done(tmp_path, run)  # rerunning the sweep rewrites it
    assert results.result_row(tmp_path, run, {})["status"] == "damaged"


def test_a_production_fit_is_a_result_without_test_metrics(tmp_path):
  """A run with data.test_size=0 scores no test windows: done, its test columns NaN; a
  run that should have test metrics and lacks them is still damaged."""
  run = runner.Run("seed=0", {}, 0, ("seed=0",))
  (tmp_path / "seed=0").mkdir()
  path = tmp_path / "seed=0" / "metrics.json"
  path.write_text('{"val": {"mse": 0.1, "mae": 0.2}, "val_windows": 3, "test_windows": 0}')
  assert runner.is_done(tmp_path, run)
  row = results.result_row(tmp_path, run, {})
  assert (row["status"], row["val_mse"], row["val_mae"]) == ("ok", 0.1, 0.2)
  assert math.isnan(row["test_mse"]) and math.isnan(row["test_mae"])
  path.write_text('{"val": {"mse": 0.1, "mae": 0.2}, "val_windows": 3, "test_windows": 3}')
  assert not runner.is_done(tmp_path, run)


def test_metrics_too_large_or_not_a_file_are_not_read(tmp_path, capsys):
  """Issue 33: a 3 GiB metrics.json was read whole to decide whether its run was done, and
  a FIFO would block the runner. Neither is read: the run is not done, its row says
  damaged, and one warning names the file however often it is checked."""
  from flaxlstm import console, fileio

  console.log_to_stderr()  # what the CLI does: warnings as `warning: ...` lines on stderr
  run = runner.Run("seed=0", {}, 0, ("seed=0",))
  for kind in ("oversized", "fifo"):
    workdir = tmp_path / kind
    (workdir / "seed=0").mkdir(parents=True)
    path = workdir / "seed=0" / "metrics.json"
    if kind == "fifo":
      os.mkfifo(path)
    else:
      with open(path, "wb") as f:
        f.write(b'{"val": {"mse": 0.1}, "test": {"mse": 0.1}, "pad": "')
        f.truncate(fileio.MAX_JSON_BYTES + 1)  # sparse: no disk used
    capsys.readouterr()
    assert not runner.is_done(workdir, run)
    assert not runner.is_done(workdir, run)
    assert results.result_row(workdir, run, {})["status"] == "damaged"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    assert str(path) in lines[0] and "counts as not done" in lines[0]


@pytest.mark.slow  # trains to completion
def test_population_sweep_trains_groups_in_process_into_the_same_store(
  tiny, tmp_path, capsys, monkeypatch
):
  # --population sets XLA_FLAGS for this process (one host device per core): restored after,
  # so that later tests' subprocesses do not inherit it.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  # Eight runs in four populations: dropout 0 and > 0 differ in structure, and the groups
  # with a lookback longer than the series fail as a whole.
  path = _write_sweep(
    tmp_path / "pop_sweep.py",
    {
      "config": tiny["exp"],
      "overrides": ["train.max_steps=10"],
      "grid": {"model.dropout": [0.0, 0.2], "data.lookback": [8, 100_000]},
      "seeds": [0, 1],
    },
  )
  workdir = tmp_path / "runs"
  args = ["sweep", path, "--workdir", str(workdir), "--population"]
  # JAX starts here if no test has before, so that --population's XLA_FLAGS cannot change
  # this process's devices; on more than one, each group of 2 is split over two devices.
  n_dev = jax.local_device_count()
  assert cli.main(args) == 1
  out, err = capsys.readouterr()
  split = "4 populations (2, 2, 2, 2 members)" if n_dev == 1 else "8 populations (1, 1"
  assert f"8 to train as {split}" in out.replace("\n", " ")
  assert "4 of 8 runs failed" in err
  with open(workdir / "results.csv") as f:
    rows = {r["name"]: r for r in csv.DictReader(f)}
  ok = [n for n, r in rows.items() if r["status"] == "ok"]
  assert len(ok) == 4 and all("data.lookback=8" in n for n in ok)
  for n in ok:
    assert (workdir / n / "metrics.json").is_file() and (workdir / n / "config.json").is_file()
  assert "error: series too short" in (workdir / "failures.txt").read_text()
  # Rerun: the finished runs are skipped; --parallel does not apply to populations.
  stamps = [(workdir / n / "metrics.json").stat().st_mtime_ns for n in ok]
  assert cli.main(args + ["--quiet"]) == 1
  assert [(workdir / n / "metrics.json").stat().st_mtime_ns for n in ok] == stamps
  assert cli.main(args + ["--parallel", "2"]) == 2
  assert "--population trains one program" in capsys.readouterr().err


def test_population_jobs_cut_groups_only_where_a_device_share_needs_it():
  groups = [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]]
  assert runner.population_jobs(groups, 1) == [[4, 5, 6, 7, 8, 9], [0, 1, 2], [3]]
  # Shares of 5: the 6 overflow by one into the second share, which the 3 and the 1 fill.
  assert runner.population_jobs(groups, 2) == [[4, 5, 6, 7, 8], [0, 1, 2], [9], [3]]
  # Whole groups that already fill the devices evenly are not cut (seed pairs, 2 devices).
  pairs = [[2 * i, 2 * i + 1] for i in range(4)]
  assert runner.population_jobs(pairs, 2) == pairs
  # The dropout sweep's groups on 2 devices: 5 populations, not one per group and device.
  sweep = [list(range(0, 3)), list(range(3, 9)), list(range(9, 15)), list(range(15, 27))]
  assert [len(j) for j in runner.population_jobs(sweep, 2)] == [12, 6, 4, 3, 2]
  for n in (1, 2, 3, 8, 16):
    jobs = runner.population_jobs(sweep, n)
    assert sorted(k for j in jobs for k in j) == list(range(27))  # each run once
    assert len(jobs) <= len(sweep) + n - 1  # at most n - 1 cuts
    assert all(j == list(range(j[0], j[-1] + 1)) for j in jobs)  # consecutive members
  assert max(map(len, runner.population_jobs(groups, 16))) == 1


def test_a_huge_grid_is_refused_by_its_count_before_it_is_expanded(tmp_path, capsys):
  # 10^8 runs: counted, never built (expanding them took 5 GB and a minute, even dry).
  grid = {
    f"model.{k}": [round(0.01 * i, 2) for i in range(10)] for k in ("dropout", "dense_dropout")
  }
  grid |= {
    f"train.{k}": [0.001 * (i + 1) for i in range(10)] for k in ("learning_rate", "l1", "l2")
  }
  grid |= {"train.weight_decay": list(range(10)), "train.clip_norm": list(range(1, 11))}
  grid |= {"model.recurrent_dropout": [round(0.01 * i, 2) for i in range(10)]}
  path = _write_sweep(tmp_path / "huge.py", {"config": "ett", "grid": grid})
  workdir = tmp_path / "runs"
  assert cli.main(["sweep", path, "--workdir", str(workdir), "--dry-run"]) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.count("\n") == 1
  assert captured.err.startswith(f"error: sweep file '{path}': the sweep has 100,000,000 runs (")
  assert f"more than the limit of {sweep_lib.MAX_RUNS:,}" in captured.err
  assert not workdir.exists()
  # The limit itself is allowed: zip rows and seeds count too.
  at_limit = {"config": "b.py", "grid": {"train.l1": list(range(10))}, "seeds": list(range(10))}
  sweep_lib.check_size(at_limit["grid"], {"train.l2": list(range(100))}, at_limit["seeds"])
  with pytest.raises(InputError, match=r"10,010 runs \(1001 train.l1 x 10 seeds\)"):
    sweep_lib.check_size({"train.l1": list(range(1001))}, {}, list(range(10)))


def test_a_sweep_file_that_exits_is_refused(tmp_path, capsys):
  path = tmp_path / "exits.py"
  path.write_text("import sys\n\ndef get_sweep():\n  sys.exit(0)\n")
  assert cli.main(["sweep", str(path), "--dry-run"]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err == (
    f"error: sweep file '{path}' called sys.exit(0) in get_sweep(); it must define its "
    "function and return\n"
  )


def test_a_population_progress_line_names_a_few_members(tiny, tmp_path, capsys, monkeypatch):
  from flaxlstm.train import population as population_lib

  monkeypatch.setattr(
    population_lib, "train_population", lambda specs, workdirs, **_: [{}] * len(specs)
  )
  sweep = sweep_lib.expand({"config": tiny["exp"], "seeds": list(range(12))})
  (tmp_path / "logs").mkdir()
  assert runner.train_populations(sweep.config, sweep.runs, tmp_path, print) == {}
  ok = [line for line in capsys.readouterr().out.splitlines() if " ok " in line]
  assert ok == ["[1/1] ok      12 runs (0 s): seed=0, seed=1, seed=2 and 9 more"]
  assert runner.some_names(["a", "b"]) == "a, b"
