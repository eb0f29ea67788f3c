"""The kernel registry, the `Kernel` interface and `select` (see the package docstring)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from typing import Any, Iterator

import jax

Array = jax.Array
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Call:
  """What a layer's call needs from a kernel, beyond the cell itself."""

  recurrent_dropout: bool = False  # a mask on the fed-back state, inside the loop
  remat: bool = False  # recompute the loop in the backward pass
  batched: bool = False  # traced under `vmap` over a population's members


class Kernel:
  """A time loop. `run` takes batch-major inputs `x (B, T, *features)`, the carry (the
  cell's own type), each sequence's length (`lengths (B,)` or None) and the recurrent
  dropout mask, and returns `(carry, ys (B, T, ...))`: outputs past a sequence's end are
  zero and its carry is the one at its own last step."""

  name: str = ""
  opt_in: bool = False  # `"auto"` never picks it
  strict: bool = True  # asked for by name, a call it cannot run is an error (else a fallback)

  @property
  def offered_as(self) -> str:
    """The name a cell offers it by (a variant of a kernel, registered under a name of its
    own for an A/B, is offered wherever the kernel is)."""
    return self.name

  def unsupported(self, cell: Any, call: Call) -> str | None:
    """Why this kernel cannot run `cell` for `call` (None: it can)."""
    del cell, call
    return None

  def run(
    self,
    cell: Any,
    p: Any,
    carry: Any,
    x: Array,
    lengths: Array | None,
    *,
    h_mask: Array | None = None,
    unroll: int = 1,
    remat: bool = False,
  ) -> tuple[Any, Array]:
    raise NotImplementedError


KERNELS: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
  """Adds `kernel` to `KERNELS` under its name (a cell offers it by that name)."""
  KERNELS[kernel.name] = kernel
  return kernel


def names() -> tuple[str, ...]:
  """What `implementation=` may be: "auto" and every registered kernel."""
  return ("auto", *KERNELS)


# Set while a population's member functions are traced (train/population.py): the kernels
# then run under `vmap`, which some have no batching rule for. A context variable, not a
# global: populations trace in threads of their own (search/runner.py).
_batched: contextvars.ContextVar[bool] = contextvars.ContextVar("batched", default=False)


@contextlib.contextmanager
def members_batched() -> Iterator[None]:
  """Within this block, layers traced here are told their calls run under `vmap` over a
  population's members (`Call.batched`)."""
  token = _batched.set(True)
  try:
    yield
  finally:
    _batched.reset(token)


def call_needs(*, recurrent_dropout: bool, remat: bool) -> Call:
  """The `Call` of a layer traced now."""
  return Call(recurrent_dropout=recurrent_dropout, remat=remat, batched=_batched.get())


_warned: set[str] = set()


def warn_fallback(requested: str, reason: str, fallback: str) -> None:
  """One warning line per reason and process (layers are traced once per compile)."""
  key = f"{requested}: {reason}"
  if key not in _warned:
    _warned.add(key)
    log.warning("implementation=%r falls back to the %s path: %s", requested, fallback, reason)


def _auto(cell: Any, call: Call) -> Kernel:
  for name in getattr(cell, "kernels", ()):
    kernel = KERNELS.get(name)
    if kernel is not None and not kernel.opt_in and kernel.unsupported(cell, call) is None:
      return kernel
  return KERNELS["autodiff"]


def _offered(cell: Any, requested: str) -> Kernel | None:
  """The kernel `cell` offers under the name `requested` (its own name, or the name it is
  offered as: an sLSTM cell's "fused" is the kernel "slstm_fused")."""
  for name in getattr(cell, "kernels", ()):
    kernel = KERNELS.get(name)
    if kernel is not None and requested in (kernel.name, kernel.offered_as):
      return kernel
  return None


def offered_names(cell_class: Any) -> tuple[str, ...]:
  """What `implementation=` may be for a cell of `cell_class`: "auto", "autodiff" and the
  names its kernels go by."""
  names = ["auto", "autodiff"]
  for name in getattr(cell_class, "kernels", ()):
    kernel = KERNELS.get(name)
    for alias in (kernel.offered_as, name) if kernel is not None else ():
      if alias not in names:
        names.append(alias)
  return tuple(names)


def select(cell: Any, requested: str, call: Call) -> Kernel:
  """The kernel that runs `cell`'s loop for `call` when `requested` ("auto" or a name)."""
  if requested == "auto":
    return _auto(cell, call)
  kernel = _offered(cell, requested) or KERNELS.get(requested)
  if kernel is None:
    raise ValueError(f"unknown implementation {requested!r}: expected one of {', '.join(names())}")
  if kernel.name == "autodiff":
    return kernel
  reason = None
  if kernel.offered_as not in getattr(cell, "kernels", ()) and kernel.name not in getattr(
    cell, "kernels", ()
  ):
    # A wrapped Flax cell (cells/base.py: `LinenStep`) is named by the cell it wraps.
    shown = type(getattr(cell, "cell", cell)).__name__
    reason = f"{shown} offers no {requested!r} kernel"
  reason = reason or kernel.unsupported(cell, call)
  if reason is None:
    return kernel
  if kernel.strict:
    raise ValueError(f"implementation={requested!r}: {reason}")
  fallback = _auto(cell, call)
  warn_fallback(requested, reason, fallback.name)
  return fallback
