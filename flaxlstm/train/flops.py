"""How much work a train step is, and how much of the devices it uses (MFU).

`step_flops(compiled)` counts the FLOPs of one call of a compiled step with XLA's own cost
analysis (`Compiled.cost_analysis()`): every op of the program XLA runs, so the forward
pass, the backward pass, gradient clipping and the optimizer update alike, and redundant
work too (an update of replicated parameters is done on every device). Two facts about
that count, checked against this JAX version:

- It is per device: the compiled program of a sharded step is one device's share (SPMD),
  so a step on N devices costs N times the count (`StepCost.flops_per_step` is that total).
- It counts a while loop's body once, however many times the loop runs (XLA's
  `HloCostAnalysis` cannot know a trip count in general). A recurrent model is almost all
  loop: the LSTM's time loop alone would be undercounted by the window length. So each
  loop whose trip count XLA knows (every `lax.scan`: it records `known_trip_count` on the
  loop) is counted that many times: its body is costed on its own, by the same analysis,
  as the entry of a module cut from the compiled program's text. A loop of unknown trip
  count is counted once, as XLA does. Where that cut fails (a JAX whose HLO text or
  private cost-analysis binding differs), the count falls back to XLA's plain figure,
  with a warning.

MFU = achieved FLOP/s / (peak FLOP/s per device x devices), the peak from
`train.peak_flops_per_device` or, when that is 0, from `PEAKS` by the device kind, the
compute dtype and the matmul precision (`peak_flops`: float32 at JAX's default precision
is TF32 on NVIDIA GPUs, so its peak is the TF32 one); no MFU where neither knows one
(CPUs).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

# Dense peak FLOP/s per device by device kind (`jax.devices()[0].device_kind`, matched as a
# lowercase substring, first match wins) and the arithmetic its matmuls run in, from the
# vendors' datasheets (without sparsity). A kind or arithmetic missing here has no MFU;
# `train.peak_flops_per_device` gives the peak of any other device.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
  ("h100 pcie", {"bfloat16": 756e12, "tensorfloat32": 378e12, "float32": 51e12}),
  # SXM ("NVIDIA H100 80GB HBM3"); the H200 has the same compute.
  ("h100", {"bfloat16": 989e12, "tensorfloat32": 494.7e12, "float32": 67e12}),
  ("h200", {"bfloat16": 989e12, "tensorfloat32": 494.7e12, "float32": 67e12}),
  ("a100", {"bfloat16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12}),
  ("tpu v4", {"bfloat16": 275e12}),
  ("tpu v5 lite", {"bfloat16": 197e12}),  # v5e
  ("tpu v5e", {"bfloat16": 197e12}),
  ("tpu v5", {"bfloat16": 459e12}),  # v5p reports itself as "TPU v5"
  ("tpu v6 lite", {"bfloat16": 918e12}),  # v6e (Trillium)
  ("tpu v6e", {"bfloat16": 918e12}),
)


def _arithmetic(dtype: Any, precision: Any) -> tuple[str, ...]:
  """The `PEAKS` columns a matmul of `dtype` inputs may run at, in order of preference,
  under JAX's default matmul precision `precision` (`jax_default_matmul_precision`):
  float32 at the default precision runs as TF32 on NVIDIA's tensor cores and as one
  bfloat16 pass on TPUs; "high" is TF32 on GPUs (TPUs do three bfloat16 passes: no
  column); "highest"/"float32" is true float32."""
  name = np.dtype(dtype).name
  if name != "float32":
    return (name,)
  level = str(precision or "default").lower()
  if level in ("default", "fastest", "bfloat16"):
    return ("tensorfloat32", "bfloat16")
  if level in ("high", "tensorfloat32"):
    return ("tensorfloat32",)
  return ("float32",)


def peak_flops(device_kind: str, dtype: Any, precision: Any = None) -> float | None:
  """The table's dense peak FLOP/s of one `device_kind` device for matmuls of `dtype`
  inputs at JAX's default matmul `precision` (None: "default"), or None."""
  kind = device_kind.lower()
  for pattern, peaks in PEAKS:
    if pattern in kind:
      return next((peaks[a] for a in _arithmetic(dtype, precision) if a in peaks), None)
  return None


@dataclasses.dataclass(frozen=True)
class StepCost:
  """One train step's FLOPs on all its devices, and the peak they could do (None:
  unknown, no MFU)."""

  flops_per_step: float
  devices: int
  peak_flops_per_device: float | None

  def metrics(self, steps: int, seconds: float) -> dict[str, float]:
    """The logged metrics of `steps` steps that took `seconds`: `flops_per_step`,
    `flops_per_s` and, with a known peak, `mfu`."""
    out = {"flops_per_step": self.flops_per_step}
    if steps > 0 and seconds > 0:
      out["flops_per_s"] = self.flops_per_step * steps / seconds
      if self.peak_flops_per_device:
        out["mfu"] = out["flops_per_s"] / (self.peak_flops_per_device * self.devices)
    return out


def compute_dtype(model_spec: Any) -> Any:
  """The dtype a model's matmuls run in: `model.cell.dtype`, else its parameters'."""
  options = model_spec.cell_options
  return options.get("dtype") or options.get("param_dtype") or np.float32


def step_cost(
  compiled: Any, devices: int, peak: float, device_kind: str, dtype: Any
) -> StepCost | None:
  """The `StepCost` of a compiled step on `devices` devices (None: XLA gave no count);
  `peak` = 0: from `PEAKS`, at the matmul precision JAX is configured with."""
  flops = step_flops(compiled)
  if flops is None:
    return None
  precision = jax.default_matmul_precision.value
  return StepCost(
    flops_per_step=flops * devices,
    devices=devices,
    peak_flops_per_device=peak or peak_flops(device_kind, dtype, precision),
  )


def step_flops(compiled: Any) -> float | None:
  """FLOPs of one call of `compiled` (a `jax.stages.Compiled`) on one device: XLA's
  count, each while loop counted as many times as it runs (the module docstring); None
  where the backend gives no cost analysis."""
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # one dict per program in older JAX versions
      analysis = analysis[0]
    flops = float(analysis["flops"])
    text = compiled.as_text()
  except Exception as e:  # the count is a report, not worth failing a run over
    log.warning(f"no FLOPs count: XLA's cost analysis failed: {e}")
    return None
  if " while(" not in text:
    return flops
  try:
    counted = _LoopCounter(text, compiled.runtime_executable().client)
    # The cut module's entry must cost what the compiled program does, or the cuts are
    # not costed as XLA costs the program.
    entry = counted.xla(counted.entry)
    if not np.isclose(entry, flops, rtol=1e-6):
      raise ValueError(f"the program's text costs {entry} FLOPs, the program {flops}")
    return counted.total(counted.entry)
  except Exception as e:  # the count is a report, not worth failing a run over
    log.warning(f"FLOPs count each while loop once (XLA's count): {e}")
    return flops


_CALLEES = re.compile(
  r"\b(?:calls|to_apply|condition|body|branch_computations|called_computations)="
  r"(\{[^}]*\}|%?[\w.\-]+)"
)
_WHILE = re.compile(r"\swhile\(.*?\bbody=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


class _LoopCounter:
  """The computations of a compiled HLO module's text, costed one by one."""

  def __init__(self, text: str, client: Any):
    # Private bindings (no public API parses HLO text or costs a module): a JAX without
    # them fails here, and `step_flops` falls back to XLA's plain count.
    from jax._src.lib import hlo, xla_client

    self._parse = hlo.hlo_module_from_text
    self._analyze = xla_client._xla.hlo_module_cost_analysis
    self.client = client
    lines = text.split("\n")
    # Module attributes the collectives of a partitioned program need when parsed again.
    header = " ".join(re.findall(r"\b(?:replica_count|num_partitions)=\d+", lines[0]))
    self.header = "HloModule cut" + (", " + header.replace(" ", ", ") if header else "")
    self.blocks: dict[str, list[str]] = {}  # computation name -> its lines, in text order
    self.entry = ""
    preamble: list[str] = []
    current: list[str] | None = None
    for line in lines[1:]:
      if current is None:
        m = re.match(r"(ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if m is None:
          if not self.blocks:
            preamble.append(line)  # stack-frame tables the ops' metadata refer to
          continue
        name = m.group(2)
        if m.group(1):
          self.entry, line = name, line[len("ENTRY ") :]
        current = self.blocks[name] = [line]
      else:
        current.append(line)
        if line == "}":
          current = None
    self.preamble = "\n".join(preamble)
    self._xla: dict[str, float] = {}

  def callees(self, name: str) -> tuple[set[str], list[tuple[str, int]]]:
    """The computations `name` calls but loop bodies, and its loops (body, trip count;
    1 where XLA does not know it)."""
    calls: set[str] = set()
    loops = []
    for line in self.blocks[name][1:]:
      for ref in _CALLEES.findall(line):
        calls.update(n.strip().lstrip("%") for n in ref.strip("{}").split(","))
      m = _WHILE.search(line)
      if m:
        trip = _TRIP.search(line)
        loops.append((m.group(1), int(trip.group(1)) if trip else 1))
    return calls - {body for body, _ in loops}, loops

  def reachable(self, name: str) -> list[str]:
    """`name` and every computation it calls, loop bodies included, in text order."""
    seen, todo = {name}, [name]
    while todo:
      calls, loops = self.callees(todo.pop())
      for callee in calls | {body for body, _ in loops}:
        if callee in self.blocks and callee not in seen:
          seen.add(callee)
          todo.append(callee)
    return [n for n in self.blocks if n in seen]

  def xla(self, name: str) -> float:
    """XLA's count of computation `name` as the entry of a module of its own."""
    if name not in self._xla:
      parts = [self.header, self.preamble]
      for n in self.reachable(name):
        block = "\n".join(self.blocks[n])
        parts.append("ENTRY " + block if n == name else block)
      module = self._parse("\n".join(parts) + "\n")
      self._xla[name] = float(self._analyze(self.client, module).get("flops", 0.0))
    return self._xla[name]

  def total(self, name: str) -> float:
    """`name`'s FLOPs, each loop in it (directly or in what it calls) counted trip times."""
    out = self.xla(name)
    seen, todo = {name}, [name]
    while todo:
      calls, loops = self.callees(todo.pop())
      for body, trip in loops:
        out += trip * self.total(body) - self.xla(body)
      for callee in calls:
        if callee in self.blocks and callee not in seen:
          seen.add(callee)
          todo.append(callee)
    return out
