"""ONNX Runtime CPU session options for inference: the one place the Describer and the benchmarks take them.

:func:`ort_session_options` (ONNX Runtime's documented knobs, docs "Thread management"):

- ``graph_optimization_level`` ``ORT_ENABLE_ALL`` (QDQ -> QLinearConv fusion, NHWC layout, Conv+BN+ReLU);
- ``execution_mode`` sequential, ``inter_op_num_threads`` 1: the network is one chain of operators, an
  inter-op pool would only add threads;
- ``intra_op_num_threads``: ``num_threads``, else the physical cores this process may run on
  (:func:`physical_cores`);
- **no spinning** by default (``session.intra_op.allow_spinning`` = 0). ONNX Runtime's default lets each
  pool worker busy-wait after its work; measured here (ORT 1.31, 2 threads) a session's worker went on
  burning ~28 ms of a core after *every* ``Run`` returned. That core was then missing to whatever ran
  next: another session (in ``benchmarks/descriptor_speed.py`` the int8 model ran right after the fp32
  one: 18.7 ms/img with 2 threads against 10.8 with 1), the place map search, the feature extractor,
  other processes of the robot. Under load a spinning worker also holds the core its partner needs to
  finish the parallel section (int8 batch 1, 2 threads, a second process busy on the other core:
  median 18.5 ms spinning, 10.3 not spinning, 10.3 with 1 thread). ``spin=True`` spins inside a Run
  only (``allow_spinning`` 1 + ``session.force_spinning_stop`` 1: the pool stops when Run returns): the
  fastest on a quiet, dedicated CPU (best run of int8 batch 1 on the shared 2-core machine: 6.3 ms
  spinning inside Run, 8.3 not spinning, 10.4 with 1 thread) but the slowest under load (median 14.7
  against 11.1); ``$TSCM_ORT_SPIN=1`` turns it on for a deployment without code changes.

Not set, measured no better here: ``session.dynamic_block_base`` (int8 2 threads: 20.9 vs 10.6 ms min
under load), ``session.set_denormal_as_zero`` (changes fp32 results; the quantized convolutions have no
denormals).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["SPIN_ENV", "ort_session_options", "physical_cores", "session_settings"]

SPIN_ENV = "TSCM_ORT_SPIN"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once; >= 1)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def session_settings(num_threads: int | None = None, *, spin: bool | None = None) -> dict[str, Any]:
    """The settings :func:`ort_session_options` applies, as plain values (for logs and records)."""
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if spin is None:
        spin = os.environ.get(SPIN_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    threads = int(num_threads) if num_threads else physical_cores()
    config = {"session.intra_op.allow_spinning": "1" if spin and threads > 1 else "0"}
    if spin and threads > 1:
        config["session.force_spinning_stop"] = "1"
    return {
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL",
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "config": config,
    }


def ort_session_options(num_threads: int | None = None, *, spin: bool | None = None):
    """``onnxruntime.SessionOptions`` for CPU inference (see the module docstring).

    ``num_threads``: intra-op threads (None: the physical cores available); ``spin``: None reads
    ``$TSCM_ORT_SPIN`` (default off).
    """
    import onnxruntime as ort

    settings = session_settings(num_threads, spin=spin)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings["intra_op_num_threads"]
    options.inter_op_num_threads = settings["inter_op_num_threads"]
    for key, value in settings["config"].items():
        options.add_session_config_entry(key, value)
    return options
