"""Named moments at which the fault tests stop a real run with a real signal.

`JAXCNN_FAULT=POINT:EPOCH:SIGNAL` (e.g. `metrics_written:1:SIGKILL`) makes the process send SIGNAL
to itself when it reaches POINT in EPOCH, so a test can kill a run exactly in the window it
examines: `metrics_written` (after an epoch's metrics row, before its checkpoint), `save_started`
(with the checkpoint save in flight), `figures` (while the final figures are written), `pretrain_saved`
(right after a pretraining epoch's checkpoint save started).
Without the variable `at` does nothing.
"""

from __future__ import annotations

import os
import signal


def at(point: str, epoch: int) -> None:
    spec = os.environ.get("JAXCNN_FAULT")
    if not spec:
        return
    name, when, sig = spec.split(":")
    if name == point and int(when) == epoch:
        os.kill(os.getpid(), getattr(signal, sig))
