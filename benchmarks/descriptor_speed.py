"""Descriptor speed on this machine: ms per image for the TSCM student/teacher inference paths.

    .venv/bin/python benchmarks/descriptor_speed.py [--threads 2] [--repeats 7] [--no-teacher] [--all]

Paths (network forward only, input already preprocessed, CPU fp32):
  student eager        plain eager PyTorch, NCHW (the baseline)
  student eager CL     eager, channels_last weights and input
  student optimized    ``tscm_ros.export.optimize_for_cpu``: traced + frozen (BN folded) + TorchScript
                       optimize_for_inference (oneDNN); what ``Describer(optimize=True)`` runs
  student ORT          ``tscm_export`` ONNX model in ONNX Runtime (graph optimisation ALL, intra-op threads)
  teacher eager        plain eager PyTorch, NCHW
``--all`` adds the other candidates that were tried (frozen without BN folding, torch.compile).
Timings are medians over ``--repeats`` round-robin rounds (every path once per round, so background
load hits all paths alike) after warm-up. GFLOP/image is counted with FlopCounterMode (2 FLOP per MAC);
"GFLOP/s" is that count divided by the time, beside a 2048x2048 fp32 GEMM measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tscm_ros.export import export_onnx, fold_batch_norms, optimize_for_cpu
from tscm_ros.models import build_model

Runner = Callable[[torch.Tensor], np.ndarray]


def gflop_per_image(model: torch.nn.Module) -> float:
    # counted with autograd enabled: under no_grad/inference_mode nn.MultiheadAttention takes a fused fast
    # path whose matmuls FlopCounterMode does not see (the teacher would read ~31 instead of ~42 GFLOP)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 1e9


def gemm_gflops(threads: int, repeats: int = 10) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def torch_runner(model: torch.nn.Module, channels_last: bool = False) -> Runner:
    def run(x: torch.Tensor) -> np.ndarray:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return model(x).numpy()

    return run


def optimized_runner(module: torch.jit.ScriptModule) -> Runner:
    return torch_runner(module, channels_last=module.channels_last)


def ort_runner(onnx_path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def frozen(model: torch.nn.Module, fold: bool, channels_last: bool) -> torch.jit.ScriptModule:
    model = copy.deepcopy(model)
    if fold:
        model = fold_batch_norms(model)
    example = torch.randn(2, 3, 224, 224)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))


def time_round_robin(runners: dict[str, Runner], x: torch.Tensor, repeats: int, warmup: int) -> dict:
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--all", action="store_true", help="also time the other candidate torch paths")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    student = build_model("student", seed=0)
    teacher = None if args.no_teacher else build_model("teacher", seed=0)
    flops = {"student": gflop_per_image(student)}
    if teacher is not None:
        flops["teacher"] = gflop_per_image(teacher)

    student_cl = copy.deepcopy(student).to(memory_format=torch.channels_last)
    runners: dict[str, Runner] = {
        "student eager": torch_runner(student),
        "student eager CL": torch_runner(student_cl, channels_last=True),
        "student optimized": optimized_runner(optimize_for_cpu(student)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(student, Path(tmp) / "student.onnx")
        runners["student ORT"] = ort_runner(onnx_path, args.threads)
    if args.all:
        runners["student frozen (no fold)"] = torch_runner(frozen(student, False, False))
        runners["student frozen CL folded"] = optimized_runner(
            optimize_for_cpu(student, method="frozen-channels-last")
        )
        runners["student frozen CL (no fold)"] = torch_runner(
            frozen(student, False, True), channels_last=True
        )
        runners["student folded eager CL"] = torch_runner(
            fold_batch_norms(copy.deepcopy(student)).to(memory_format=torch.channels_last), channels_last=True
        )
        try:
            start = time.perf_counter()
            compiled = torch.compile(copy.deepcopy(student_cl))
            with torch.inference_mode():
                for batch in args.batches:
                    compiled(torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last))
            print(f"torch.compile warm-up took {time.perf_counter() - start:.1f} s")
            runners["student torch.compile CL"] = torch_runner(compiled, channels_last=True)
        except Exception as error:  # inductor needs a working C++ toolchain
            print(f"torch.compile unavailable: {type(error).__name__}: {str(error)[:200]}")
    if teacher is not None:
        runners["teacher eager"] = torch_runner(teacher)

    gemm = gemm_gflops(args.threads)
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        reference = {
            arch: torch_runner(net)(x) for arch, net in (("student", student), ("teacher", teacher)) if net
        }
        medians = time_round_robin(runners, x, args.repeats, args.warmup)
        for name, seconds in medians.items():
            arch = name.split()[0]
            diff = float(np.abs(runners[name](x) - reference[arch]).max())
            ms = seconds * 1000 / batch
            rows.append(
                (name, batch, ms, flops[arch] / (ms / 1000), diff, medians[f"{arch} eager"] / seconds)
            )
    gemm_after = gemm_gflops(args.threads)

    print(
        f"\nthreads={args.threads}, torch {torch.__version__}, repeats={args.repeats} (median), "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print("GFLOP/image: " + ", ".join(f"{arch} {value:.2f}" for arch, value in flops.items()))
    print(f"2048x2048 fp32 GEMM: {gemm:.1f} GFLOP/s (before), {gemm_after:.1f} GFLOP/s (after)\n")
    print("| path | batch | ms/img | img/s | GFLOP/s | % of GEMM | speed-up vs eager | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, ms, gflops, diff, speedup in rows:
        print(
            f"| {name} | {batch} | {ms:.1f} | {1000 / ms:.1f} | {gflops:.1f} | {100 * gflops / gemm:.0f}% "
            f"| {speedup:.2f}x | {diff:.1e} |"
        )
    for batch in args.batches:
        student_rows = [
            r for r in rows if r[1] == batch and r[0].startswith("student") and r[0] != "student eager"
        ]
        best = max(student_rows, key=lambda r: r[5])
        print(
            f"\nbatch {batch}: fastest student path = {best[0]}: {best[5]:.2f}x faster than plain eager fp32 "
            f"({best[2]:.1f} vs {best[2] * best[5]:.1f} ms/img), max abs diff {best[4]:.1e}"
        )


if __name__ == "__main__":
    main()
