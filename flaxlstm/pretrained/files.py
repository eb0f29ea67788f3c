"""TiRex and files: the one-time checkpoint conversion (`flaxlstm tirex convert`) and
zero-shot forecasts of a table (`flaxlstm tirex forecast`).

The published checkpoint is a PyTorch Lightning file, a pickle. flaxlstm never unpickles:
`convert_checkpoint` reads it once with `torch.load(weights_only=True)` (torch's
restricted loader: tensors and plain containers, no code) and writes plain arrays
(`tirex.save_weights`); everything else reads only those, with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import io as iobytes
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from flaxlstm import fileio
from flaxlstm.config.specs import DataSpec
from flaxlstm.data import calendar, io, steps, table
from flaxlstm.errors import InputError
from flaxlstm.pretrained import tirex


def _why(e: OSError) -> str:
  return e.strerror or str(e)


def convert_checkpoint(checkpoint: str, out: str, *, overwrite: bool = False) -> tirex.TiRexConfig:
  """Converts TiRex's Lightning checkpoint (`model.ckpt` of NX-AI/TiRex on the hub) into
  the `.npz` `load_weights` reads; needs torch (any CPU build). Returns the config."""
  from flaxlstm.train import workdir as workdir_lib

  path = workdir_lib.check_output(out, inputs=(checkpoint,), overwrite=overwrite)
  try:
    import torch
  except ImportError:
    raise InputError(
      "flaxlstm tirex convert reads a PyTorch checkpoint and needs torch: pip install torch "
      "--index-url https://download.pytorch.org/whl/cpu (the CPU wheel is enough)"
    ) from None
  try:
    with fileio.open_regular(checkpoint) as f:
      # weights_only: torch's restricted unpickler (tensors, dicts, numbers); no code runs.
      ckpt = torch.load(f, map_location="cpu", weights_only=True)
  except OSError as e:
    raise InputError(f"cannot read checkpoint {checkpoint}: {_why(e)}") from None
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for bad files
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise InputError(f"{checkpoint} is not a loadable PyTorch checkpoint: {first}") from None
  if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
    raise InputError(
      f"{checkpoint} is not a TiRex Lightning checkpoint (it needs 'state_dict' and "
      "'hyper_parameters')"
    )
  try:
    config = tirex.TiRexConfig.from_tirex(ckpt["hyper_parameters"])
    state = {k: v.detach().float().numpy() for k, v in ckpt["state_dict"].items()}
    params = tirex.params_from_tirex(state, config)
  except (ValueError, AttributeError) as e:
    raise InputError(f"{checkpoint}: {e}") from None
  buffer = iobytes.BytesIO()
  tirex.save_weights(buffer, config, params)
  try:
    workdir_lib.write_output(path, buffer.getvalue(), overwrite=overwrite)
  except OSError as e:
    raise InputError(f"cannot write {out}: {_why(e)}") from None
  return config


@dataclasses.dataclass(frozen=True)
class TableColumns:
  """Which columns of a table to read: NeuralForecast's names by default; `id_column=""`
  for a wide table, each target column its own series."""

  id_column: str = "unique_id"
  date_column: str = "ds"
  target: tuple[str, ...] = ("y",)
  date_format: str = ""
  freq: str = ""  # a pandas offset; "" = each series' own, inferred


def read_series(data: str, columns: TableColumns) -> tuple[table.Table, np.ndarray]:
  """The table's series (missing values kept as NaN) and `(rows, n_targets)` values."""
  spec = DataSpec(
    path=data,
    id_column=columns.id_column,
    date_column=columns.date_column,
    date_format=columns.date_format,
    target=columns.target,
    features=columns.target,
    fill=io.KEEP_MISSING,
    # TiRex reads a missing value as a gap (its observed mask), so a missing date becomes
    # one: the context then spans the time it should.
    missing_dates="fill",
    freq=columns.freq,
  )
  if columns.freq and not steps.valid_freq(columns.freq):
    raise InputError(f"--freq {columns.freq!r} is not a pandas frequency (such as 'h', 'D', 'MS')")
  resolved = io.data_file(data)
  raw, kind = table.read(spec, resolved)
  named = [("--id-column", columns.id_column), ("--date-column", columns.date_column)]
  for flag, name in named + [("--target", t) for t in columns.target]:
    if name and name not in raw.columns:
      raise InputError(
        f"column {name!r} ({flag}) not found in {resolved} "
        f"(columns: {io.list_names(list(raw.columns))})"
      )
  got, _ = table.validate_table(spec, resolved, raw, kind, list(spec.target), check_constant=False)
  values = got.frame[list(spec.target)].to_numpy(np.float32)
  return got, values


def contexts(values: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
  """`(n_series * n_targets, length)`: each series' last `length` values of each target,
  NaN-padded on the left (series-major, then target)."""
  n_series, n_targets = len(offsets) - 1, values.shape[1]
  out = np.full((n_series, n_targets, length), np.nan, np.float32)
  for s, (b, e) in enumerate(zip(offsets[:-1], offsets[1:])):
    take = min(e - b, length)
    out[s, :, length - take :] = values[e - take : e].T
  return out.reshape(n_series * n_targets, length)


def forecast_array(
  model: tirex.TiRex, params: Any, context: np.ndarray, horizon: int, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """`tirex.forecast` over the rows of `context`, `batch_size` at a time (the last batch
  padded, so one program serves every batch)."""
  fn = jax.jit(lambda p, c: tirex.forecast(model, p, c, horizon))
  n = len(context)
  size = min(batch_size, n)
  qs, ms = [], []
  for start in range(0, n, size):
    chunk = context[start : start + size]
    pad = size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.full((pad, chunk.shape[1]), np.nan, np.float32)])
    q, m = fn(params, chunk)
    qs.append(np.asarray(q)[: size - pad])
    ms.append(np.asarray(m)[: size - pad])
  return np.concatenate(qs), np.concatenate(ms)


def forecast_file(
  weights: str,
  data: str,
  out: str,
  *,
  horizon: int,
  columns: TableColumns = TableColumns(),
  batch_size: int = 256,
  overwrite: bool = False,
) -> tuple[int, int]:
  """TiRex's zero-shot forecast of the `horizon` steps after each series of `data`; writes
  a CSV like `flaxlstm predict`'s (id, origin, step, date, each target's median and its
  quantiles `y_q0.1`, ... in the data's units). Returns (forecasts, rows) written.

  Never writes over `data`, nor over an existing file without `overwrite`."""
  import pandas as pd

  from flaxlstm.train import workdir as workdir_lib

  if horizon <= 0:
    raise InputError(f"--horizon must be a positive number of steps, got {horizon}")
  if batch_size <= 0:
    raise InputError(f"--batch-size must be positive, got {batch_size}")
  path = workdir_lib.check_output(out, inputs=(data, weights), overwrite=overwrite)
  model, params = tirex.read_weights(weights)
  got, values = read_series(data, columns)
  cfg = model.config
  ctx = contexts(values, got.offsets, min(int(np.diff(got.offsets).max()), cfg.train_ctx_len))
  quantiles, median = forecast_array(model, params, ctx, horizon, batch_size)
  n_series, names = len(got.offsets) - 1, list(columns.target)
  shape = (n_series, len(names), horizon)
  median = median.reshape(shape)
  quantiles = quantiles.reshape(shape + (len(cfg.quantiles),))
  ends = got.offsets[1:] - 1
  out_table: dict[str, Any] = {}
  if columns.id_column:
    out_table[columns.id_column] = np.repeat(np.asarray(got.series_ids, dtype=object), horizon)
  if columns.date_column:
    dates = got.frame[columns.date_column].to_numpy("datetime64[ns]")
    ahead = calendar.future_dates(
      dates,
      got.offsets,
      horizon,
      source=str(got.path),
      series_ids=got.series_ids,
      freq=columns.freq,
    )
    out_table["origin"] = np.repeat(dates[ends], horizon)
    out_table["step"] = np.tile(np.arange(1, horizon + 1), n_series)
    out_table["date"] = ahead.reshape(-1)
  else:
    out_table["origin"] = np.repeat(np.diff(got.offsets) - 1, horizon)
    out_table["step"] = np.tile(np.arange(1, horizon + 1), n_series)
  for k, name in enumerate(names):
    out_table[name] = median[:, k].reshape(-1).astype(np.float64)
    for j, level in enumerate(cfg.quantiles):
      out_table[f"{name}_q{level:g}"] = quantiles[:, k, :, j].reshape(-1).astype(np.float64)
  text = pd.DataFrame(out_table).to_csv(index=False)
  try:
    workdir_lib.write_output(path, text, overwrite=overwrite)
  except OSError as e:
    raise InputError(f"cannot write --out {out}: {_why(e)}") from None
  return n_series * len(names), n_series * horizon


def parse_target(value: str) -> tuple[str, ...]:
  """`--target a,b` -> ("a", "b")."""
  names = tuple(n.strip() for n in value.split(","))
  if not all(names) or len(set(names)) != len(names):
    raise InputError(f"--target must name distinct columns, comma-separated, got {value!r}")
  return names


__all__: Sequence[str] = ["TableColumns", "convert_checkpoint", "forecast_file"]
