"""TiRex in Flax (flaxlstm/pretrained/): equal to NX-AI's `tirex-ts` on random weights, its
weights converted once and read without pickles, zero-shot forecasts of a table from the
CLI, and fine-tuning through the training stack (`model.encoder="tirex"`).

The comparisons need the `refs` extra (torch, tirex-ts); without it they skip.
"""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from flaxlstm import cli
from flaxlstm import config as config_lib
from flaxlstm import train as train_lib
from flaxlstm.pretrained import tirex as T
from flaxlstm.train import assembly

# Small enough to run in seconds, with every part of the real model: two blocks of two
# heads, patches of 4, a context of 16 steps (4 tokens).
CFG = T.TiRexConfig(
  patch_size=4, embedding_dim=16, num_heads=2, num_blocks=2, input_ff_dim=24, train_ctx_len=16
)
SMALL = [
  f"model.tirex.{k}={getattr(CFG, k)}"
  for k in ("patch_size", "embedding_dim", "num_heads", "num_blocks", "input_ff_dim")
] + ["model.tirex.train_ctx_len=16", "data.lookback=16", "data.horizon=6"]


def _reference(torch):
  """A `tirex-ts` TiRex with random weights, run in float32.

  Its CPU backend rounds the sLSTM's inputs, states and recurrent kernel to bfloat16 at
  every step (mixed precision); the equations are the same in float32, which is what a
  1e-4 comparison can check. The patch keeps its code path and drops only the casts."""
  from tirex.models.slstm import cell as tcell
  from tirex.models.tirex import TiRexZero

  def float32(self, x, state):
    x = x.view(x.shape[0], x.shape[1], -1)
    nh, ng, dh = self.config.num_heads, self.config.num_gates, self.config.head_dim
    bias = self._bias_.reshape(nh, ng, dh).permute(1, 0, 2).reshape(-1)
    return self._impl_forward_torch(
      x.float(), state.float(), self._recurrent_kernel_.float(), bias.float()
    )

  torch.manual_seed(0)
  ref = TiRexZero(backend="torch", model_config=CFG.to_tirex(), train_ctx_len=CFG.train_ctx_len)
  with torch.no_grad():
    for p in ref.parameters():  # larger than the init so that every part matters
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
  ref.eval()
  return ref, float32, tcell.sLSTMCell


@pytest.fixture(scope="module")
def ref():
  torch = pytest.importorskip("torch")
  pytest.importorskip("tirex")
  model, float32, cell_class = _reference(torch)
  real = cell_class._impl_torch
  cell_class._impl_torch = float32
  yield torch, model
  cell_class._impl_torch = real


def _state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
  "length, horizon",
  [(30, 9), (3, 4), (50, 13)],  # several rollouts; shorter than a patch; longer than the context
)
def test_forecast_equals_tirex_ts(ref, length, horizon):
  torch, reference = ref
  model, params = T.load_tirex(_state(reference), CFG.to_tirex() | {"train_ctx_len": 16})
  rng = np.random.default_rng(length)
  context = (rng.normal(size=(3, length)).cumsum(-1) + 5).astype(np.float32)
  context[0, length // 2] = np.nan  # a gap, masked
  context[1, :] = np.where(np.arange(length) % 3 == 0, np.nan, context[1])
  for patches in (1, 2):  # step by step, and TiRex's accelerated rollout
    want_q, want_m = reference._forecast_quantiles(
      torch.tensor(context), prediction_length=horizon, max_accelerated_rollout_steps=patches
    )
    q, m = T.forecast(model, params, context, horizon, rollout_patches=patches)
    assert q.shape == (3, horizon, len(CFG.quantiles))
    np.testing.assert_allclose(np.asarray(q), want_q.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(m), want_m.numpy(), atol=1e-4, rtol=1e-4)


def _checkpoint(torch, reference, path):
  """A Lightning-style checkpoint as TiRex's hub file holds it (its `block_stack.`
  prefix on the blocks included)."""
  state = {
    ("block_stack." + k if k.startswith("blocks.") else k): v
    for k, v in reference.state_dict().items()
  }
  hyper = {"model_config": CFG.to_tirex(), "train_ctx_len": CFG.train_ctx_len}
  torch.save({"state_dict": state, "hyper_parameters": hyper, "epoch": 3}, path)


def test_convert_writes_plain_arrays_that_forecast_the_same(ref, tmp_path, capsys):
  torch, reference = ref
  ckpt, out = tmp_path / "model.ckpt", tmp_path / "tirex.npz"
  _checkpoint(torch, reference, ckpt)
  assert cli.main(["tirex", "convert", str(ckpt), "--out", str(out)]) == 0
  assert "2 blocks of width 16" in capsys.readouterr().out
  with np.load(out, allow_pickle=False) as z:  # plain arrays only: no pickle to allow
    assert all(z[k].dtype != object for k in z.files)
  model, params = T.load_weights(str(out))
  assert model.config == CFG
  want, _ = T.load_tirex(_state(reference), CFG)
  context = np.linspace(0, 3, 40, dtype=np.float32)[None] ** 2
  np.testing.assert_array_equal(
    np.asarray(T.forecast(model, params, context, 7)[0]),
    np.asarray(T.forecast(want, _, context, 7)[0]),
  )
  # Refused, one line each: an existing --out, a file that is not a checkpoint.
  assert cli.main(["tirex", "convert", str(ckpt), "--out", str(out)]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  bad = tmp_path / "bad.ckpt"
  bad.write_text("unique_id,ds,y\n")
  assert cli.main(["tirex", "convert", str(bad), "--out", str(tmp_path / "x.npz")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "bad.ckpt" in err
  assert not (tmp_path / "x.npz").exists()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """Random weights of CFG, saved as `flaxlstm tirex convert` writes them."""
  path = tmp_path_factory.mktemp("tirex") / "tirex.npz"
  model, params = T.init(CFG, seed=1)
  T.save_weights(str(path), CFG, params)
  return str(path), model, params


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
  """A long table: three series of different lengths, frequencies and a gap."""
  rng = np.random.default_rng(0)
  rows = []
  for i, (n, freq) in enumerate([(40, "h"), (90, "D"), (9, "W-MON")]):
    ds = pd.date_range("2024-01-01", periods=n, freq=freq)
    y = 10 * i + np.sin(np.arange(n) / 3) + 0.1 * rng.normal(size=n)
    rows += [dict(unique_id=f"s{i}", ds=d, y=v) for d, v in zip(ds, y)]
  frame = pd.DataFrame(rows)
  frame.loc[5, "y"] = np.nan
  path = tmp_path_factory.mktemp("panel") / "panel.csv"
  frame.sample(frac=1, random_state=0).to_csv(path, index=False)  # any row order
  return str(path), frame, {"s0": "h", "s1": "D", "s2": "W-MON"}


def test_zero_shot_forecasts_every_series_of_a_long_table(weights, panel, tmp_path, capsys):
  path, model, params = weights
  data, frame, freqs = panel
  out = tmp_path / "fc.csv"
  args = ["tirex", "forecast", "--weights", path, "--data", data, "--horizon", "6"]
  assert cli.main(args + ["--out", str(out)]) == 0
  assert "wrote 3 forecasts (18 rows)" in capsys.readouterr().out
  got = pd.read_csv(out, dtype={"unique_id": str}, parse_dates=["origin", "date"])
  levels = [f"y_q{q:g}" for q in CFG.quantiles]
  assert list(got.columns) == ["unique_id", "origin", "step", "date", "y", *levels]
  for sid, group in frame.groupby("unique_id"):
    rows = got[got.unique_id == sid]
    ds = pd.DatetimeIndex(group.ds)
    assert list(rows.date) == list(pd.date_range(ds[-1], periods=7, freq=freqs[sid])[1:])
    assert (rows.origin == ds[-1]).all()
    # The series' own past, NaN kept: the same as the library's forecast of it.
    q, m = T.forecast(model, params, group.y.to_numpy(np.float32)[None], 6)
    np.testing.assert_allclose(rows.y, np.asarray(m)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows[levels], np.asarray(q)[0], rtol=1e-5, atol=1e-5)


def test_zero_shot_on_a_wide_table_and_its_refusals(weights, panel, tmp_path, capsys):
  path, model, params = weights
  wide = tmp_path / "wide.csv"
  n = 30
  pd.DataFrame(
    {"date": pd.date_range("2024-01-01", periods=n, freq="h"), "a": np.arange(n) * 1.0, "b": -1.0}
  ).to_csv(wide, index=False)
  out = tmp_path / "w.csv"
  base = ["tirex", "forecast", "--weights", path, "--horizon", "5"]
  wide_args = ["--id-column", "", "--date-column", "date", "--target", "a,b"]
  assert cli.main(base + ["--data", str(wide), "--out", str(out)] + wide_args) == 0
  got = pd.read_csv(out)
  assert len(got) == 5 and {"a", "b", "a_q0.9", "b_q0.1"} <= set(got.columns)
  frame = pd.read_csv(wide)
  for column in ("a", "b"):  # each column its own series (b constant: scaled by its level)
    want = T.forecast(model, params, frame[column].to_numpy(np.float32)[None], 5)[1]
    np.testing.assert_allclose(got[column], np.asarray(want)[0], rtol=1e-5, atol=1e-5)
  capsys.readouterr()
  cases = [
    (["--data", str(wide), "--out", str(wide)] + wide_args, "would destroy the input"),
    (["--data", str(wide), "--out", str(out)] + wide_args, "exists; pass --overwrite"),
    (
      ["--data", str(wide), "--out", str(tmp_path / "n.csv"), "--id-column", ""]
      + ["--date-column", "date"],
      "'y' (--target)",
    ),
    (["--data", str(wide), "--out", str(tmp_path / "n.csv")], "'unique_id' (--id-column)"),
  ]
  for extra, needle in cases:
    assert cli.main(base + extra) == 2, extra
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  args = ["tirex", "forecast", "--weights", str(bad), "--data", str(wide), "--horizon", "5"]
  assert cli.main(args + ["--out", str(tmp_path / "n.csv")] + wide_args) == 2
  assert "not a TiRex weights file" in capsys.readouterr().err
  assert not (tmp_path / "n.csv").exists()


def _finetune(data, *overrides):
  return config_lib.load_config(
    "tirex", [f"data.path={data}", "train.eval_every_steps=4", *[o for o in SMALL], *overrides]
  )


def test_fine_tuning_starts_from_the_weights_and_forecasts_as_zero_shot(weights, panel):
  path, model, params = weights
  data, frame, _ = panel
  config = _finetune(data, f"model.tirex.weights={path}", "data.fill=ffill", "data.drop_short=True")
  setup = assembly.assemble(config_lib.to_spec(config))
  state = setup.init_state()
  for a, b in zip(jax.tree.leaves(state.params["tirex"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The forecaster's output on a window, mapped back to the data's units, is TiRex's
  # zero-shot forecast of that window (sorted): the data's scaling changes nothing.
  index = setup.data.window_index("val")
  start = index.rows(np.zeros(1, np.int64))
  from flaxlstm.data import windows

  inputs = windows.model_inputs(setup.data, start)
  out = np.asarray(setup.model.apply({"params": state.params}, **inputs))  # (1, H, 1, Q)
  got = np.stack([setup.data.inverse_targets(out[..., j], start) for j in range(out.shape[-1])], -1)
  x = windows.gather_inputs(setup.data, start)
  raw = np.stack([setup.data.inverse_targets(x[..., :1], start)])[0, 0, :, 0]
  want, _ = T.forecast(model, params, raw[None], 6)
  np.testing.assert_allclose(got[0, :, 0], np.sort(np.asarray(want)[0], -1), rtol=1e-4, atol=1e-4)


class _Interrupt(Exception):
  pass


@pytest.mark.slow  # trains two runs to completion
def test_fine_tuning_lowers_the_loss_and_resumes_bit_identical(panel, tmp_path, monkeypatch):
  data, _, _ = panel
  overrides = ("data.fill=ffill", "data.drop_short=True", "train.max_steps=8")
  overrides += ("train.learning_rate=3e-3", "train.batch_size=8", "train.warmup_steps=0")
  ref = str(tmp_path / "ref")
  metrics = train_lib.train_and_evaluate(_finetune(data, *overrides), ref)
  with open(os.path.join(ref, "metrics.jsonl")) as f:
    train = [json.loads(line)["loss"] for line in f if '"split": "train"' in line]
  assert train[-1] < train[0], train
  wd = str(tmp_path / "killed")
  real = assembly.Setup.host_batch
  calls = []

  def dies(self, step, rows=slice(None)):
    calls.append(step)
    if len(calls) == 6:  # between the checkpoints at steps 4 and 8
      raise _Interrupt()
    return real(self, step, rows)

  monkeypatch.setattr(assembly.Setup, "host_batch", dies)
  with pytest.raises(_Interrupt):
    train_lib.train_and_evaluate(_finetune(data, *overrides), wd)
  monkeypatch.setattr(assembly.Setup, "host_batch", real)
  again = train_lib.train_and_evaluate(_finetune(data, *overrides), wd)
  for key in ("val", "test", "steps", "best_step"):
    assert again[key] == metrics[key], key
