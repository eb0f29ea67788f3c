"""Time loops as pure functions of arrays, a registry of them, and the one function that
picks one for a cell and a call (`select`).

    KERNELS      name -> Kernel: "autodiff" (scan.py, any cell), "fused" (lstm_fused.py,
                 the LSTM's custom VJP), "slstm_fused" (slstm_fused.py, the sLSTM's, which
                 an sLSTM cell offers as "fused"), "cudnn" (cudnn.py, NVIDIA's LSTM, opt-in),
                 "mlstm_chunkwise" / "mlstm_parallel" / "mlstm_recurrent" (mlstm.py, the
                 mLSTM's three forms, offered as "chunkwise", "parallel", "recurrent")
    select       (cell, requested implementation, what the call needs) -> the Kernel to run
    recurrence   a cell over time-major inputs on the kernel `select` picks (tests, benchmarks)

A cell declares the kernels it offers (`cell.kernels`, flaxlstm/nn/cells/base.py); each
kernel says what it cannot run (`unsupported(cell, call)`). `"auto"` takes the first kernel
the cell offers that is not opt-in and can run the call, else the autodiff loop, which runs
every cell. A kernel asked for by name that cannot run is an error when the kernel is
`strict` (`"fused"`: the user asked for exactly that loop) and a fallback to what `"auto"`
picks, with one warning line per reason, when it is not (`"cudnn"`: a config written for a
GPU cluster still runs on a laptop).

A new kernel is one module here and one `register` call; a cell offers it by name.
"""

from flaxlstm.nn.kernels import cudnn, lstm_fused, mlstm, scan, slstm_fused
from flaxlstm.nn.kernels.registry import (
  KERNELS,
  Call,
  Kernel,
  call_needs,
  members_batched,
  names,
  offered_names,
  register,
  select,
)
from flaxlstm.nn.kernels.scan import recurrence

__all__ = [
  "KERNELS",
  "Call",
  "Kernel",
  "call_needs",
  "cudnn",
  "lstm_fused",
  "members_batched",
  "mlstm",
  "names",
  "offered_names",
  "recurrence",
  "register",
  "scan",
  "select",
  "slstm_fused",
]
