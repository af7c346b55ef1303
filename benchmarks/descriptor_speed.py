"""Descriptor speed on this machine: ms per image for the TSCM student/teacher inference paths.

    .venv/bin/python benchmarks/descriptor_speed.py [--threads 2] [--repeats 7] [--no-teacher] [--all]
        [--model DIR] [--calibrate SOURCE] [--calibration-images 64] [--accuracy corridor:DIR]

Paths (network forward only, input already preprocessed):
  student eager        plain eager PyTorch fp32, NCHW (the baseline)
  student eager CL     eager, channels_last weights and input
  student optimized    ``tscm_ros.export.optimize_for_cpu``: traced + frozen (BN folded) + TorchScript
                       optimize_for_inference (oneDNN); what ``Describer(optimize=True)`` runs
  student ORT          ``tscm_export`` ONNX model in ONNX Runtime fp32 (graph optimisation ALL)
  student ORT int8     ``tscm_export --int8`` model (static QDQ, Conv in int8) in ONNX Runtime
  student bf16 CL      eager under ``torch.autocast("cpu", torch.bfloat16)``, channels_last
  teacher eager        plain eager PyTorch, NCHW
``--all`` adds the other candidates that were tried (frozen without BN folding, torch.compile).

A second table times ``Describer.describe`` on one 640x480 uint8 camera image end to end (preprocessing
included): torch fp32/bf16 (preprocess in torch) against ONNX Runtime fp32/int8 with the preprocessing in
the graph (uint8 in) and fp32 with float input. ``--accuracy corridor:DIR`` (default the shared Corridor
copy) compares every lower-precision path with eager fp32 on all its images: per-image cosine (min/mean),
the cosine after removing the mean descriptor ("centred"; an untrained network's descriptors are all
alike, this exposes errors in what differs between images), and R@1/R@5. Without ``--model`` the seeded
*untrained* student is measured (no trained weights ship with the repository).
A third table times ONNX Runtime's threading at batch 1 (int8 and fp32; 1 thread against ``--threads``
with ONNX Runtime's default spinning workers, without spinning -- what ``tscm_ros.ort_options`` sets -- and
spinning inside Run only), with min/median wall and CPU ms per image including what the threads burn after
Run returns. ``--demo`` (default on) runs the demo scene's loop closures (``tscm_demo``) with each path as
the Describer and prints retrieval/verified precision, recall and R@1.
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

SHARED_CORRIDOR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corridor"

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


def bf16_runner(model: torch.nn.Module) -> Runner:
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last))
        return out.float().numpy()

    return run


def ort_runner(onnx_path: Path, threads: int, spin: bool | None = False, ort_default: bool = False) -> Runner:
    """An ONNX Runtime CPU session with :func:`tscm_ros.ort_options.ort_session_options` (what the
    Describer uses); ``ort_default``: ONNX Runtime's own defaults (spinning workers), only threads set."""
    import onnxruntime as ort

    from tscm_ros.ort_options import ort_session_options

    if ort_default:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
    else:
        options = ort_session_options(threads, spin=spin)
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def threading_rows(model_dir: Path, threads: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """Batch 1, int8 and fp32: 1 thread against ``threads`` with ONNX Runtime's defaults (workers spin,
    also after Run), no spinning (ours) and spinning inside Run only. Blocks of runs per session in turn,
    20 ms idle between blocks; per session: (name, min ms, median ms, CPU ms per image incl. what its
    threads burn after Run, i.e. process CPU over the block / images)."""
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    variants: dict[str, Runner] = {}
    for label, name in (("int8", "model.int8.onnx"), ("fp32", "model.onnx")):
        variants[f"{label} 1 thread"] = ort_runner(model_dir / name, 1)
        variants[f"{label} {threads} threads, ORT default (spinning)"] = ort_runner(
            model_dir / name, threads, ort_default=True
        )
        variants[f"{label} {threads} threads, no spinning (ours)"] = ort_runner(model_dir / name, threads)
        variants[f"{label} {threads} threads, spin inside Run only"] = ort_runner(
            model_dir / name, threads, spin=True
        )
    for run in variants.values():
        run(x)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(max(repeats, 3)):
        for name, run in variants.items():
            cpu_start = time.process_time()
            for _ in range(5):
                start = time.perf_counter()
                run(x)
                wall[name].append(time.perf_counter() - start)
            time.sleep(0.02)  # spinning workers burn CPU here; counted to this session below
            cpu[name].append((time.process_time() - cpu_start) / 5)
    median = statistics.median
    return [
        (name, 1000 * min(wall[name]), 1000 * median(wall[name]), 1000 * median(cpu[name]))
        for name in variants
    ]


def demo_rows(model_dir: Path, threads: int, work_dir: Path) -> list[tuple[str, dict, dict | None]]:
    """The demo scene's loop closures (``tscm_demo`` pipeline: two laps, shipped params, threshold calibrated
    without ground truth) with each precision path as the node's Describer: (path, retrieval, verified)."""
    import json

    from tscm_ros.demo.main import SUMMARY_JSON, run_demo
    from tscm_ros.describer import create_describer

    configs = {
        "student eager": dict(backend="torch", device="cpu"),
        "student ORT": dict(backend="onnxruntime", precision="fp32"),
        "student ORT int8": dict(backend="onnxruntime", precision="int8"),
        "student bf16 CL": dict(backend="torch", device="cpu", precision="bf16"),
    }
    rows = []
    for name, options in configs.items():
        describer = create_describer(model_dir, num_threads=threads, batch_size=8, **options)
        run_demo(work_dir, describer=describer, progress=False)  # the rendered bag is reused after the first
        summary = json.loads((work_dir / SUMMARY_JSON).read_text())
        rows.append((name, summary["retrieval"], summary["verified"]))
    return rows


def prepare_exports(student: torch.nn.Module, model_dir: Path, args: argparse.Namespace) -> dict:
    """model.onnx + model.int8.onnx (+ rgb variants) of ``student`` in ``model_dir``; the int8 record."""
    from tscm_ros.export import export_rgb_onnx
    from tscm_ros.model_io import record_export, save_model
    from tscm_ros.quantize import export_int8, load_calibration_set

    save_model(student, model_dir, provenance=getattr(student, "provenance", "") or "benchmark")
    export_onnx(student, model_dir / "model.onnx")
    start = time.perf_counter()
    calibration = load_calibration_set(args.calibrate, args.calibration_images)
    record = export_int8(model_dir / "model.onnx", model_dir, calibration, num_threads=args.threads)
    record_export(model_dir, "int8", record)
    print(
        f"int8 export: {len(calibration.calibration)} calibration images from {args.calibrate}, "
        f"{time.perf_counter() - start:.0f} s; held-out cosine min {record['accuracy']['cosine_min']:.5f}"
    )
    for name in ("model.onnx", "model.int8.onnx"):
        export_rgb_onnx(model_dir / name, model_dir / name.replace(".onnx", ".rgb.onnx"))
    return record


def accuracy_rows(runners: dict[str, Runner], spec: str, reference_name: str) -> tuple[list[tuple], int]:
    """Per path: cosine to the reference path per image (min/mean, raw and centred), R@1, R@5."""
    from PIL import Image

    from tscm_ros.data.registry import load_dataset
    from tscm_ros.evaluation import exact_search, recall_at_n
    from tscm_ros.models.preprocessing import preprocess
    from tscm_ros.quantize import descriptor_agreement

    dataset = load_dataset(spec)
    files = list(dataset.database) + list(dataset.queries)
    inputs = [preprocess(np.asarray(Image.open(path).convert("RGB"))) for path in files]
    batches = [torch.cat(inputs[i : i + 8]) for i in range(0, len(inputs), 8)]
    outputs = {name: np.concatenate([run(x) for x in batches]) for name, run in runners.items()}
    reference = outputs[reference_name]
    rows = []
    for name, out in outputs.items():
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
        _, ranked = exact_search(out[: len(dataset.database)], out[len(dataset.database) :], 5)
        recall = recall_at_n(ranked, dataset.positives["gt"], (1, 5))
        agreement = descriptor_agreement(out, reference)
        rows.append((name, agreement, recall[1], recall[5]))
    return rows, len(files)


def time_describe(model_dir: Path, threads: int, repeats: int) -> list[tuple[str, float]]:
    """ms for Describer.describe on one 640x480 uint8 image, per configuration (median, round-robin)."""
    from tscm_ros.describer import create_describer

    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    configs = {
        "torch fp32 (torch preprocess)": dict(backend="torch", device="cpu"),
        "torch bf16 (torch preprocess)": dict(backend="torch", device="cpu", precision="bf16"),
        "ORT fp32, float input (torch preprocess)": dict(backend="onnxruntime", rgb_input=False),
        "ORT fp32, uint8 input (preprocess in graph)": dict(backend="onnxruntime", precision="fp32"),
        "ORT int8, uint8 input (preprocess in graph)": dict(backend="onnxruntime", precision="int8"),
    }
    describers = {
        name: create_describer(model_dir, num_threads=threads, batch_size=1, **options)
        for name, options in configs.items()
    }
    medians = time_round_robin({k: d.describe for k, d in describers.items()}, image, repeats, warmup=2)
    return [(name, 1000 * seconds) for name, seconds in medians.items()]


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


CLOCK = time.perf_counter


def time_round_robin(runners: dict[str, Runner], x: torch.Tensor, repeats: int, warmup: int) -> dict:
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = CLOCK()
            run(x)
            times[name].append(CLOCK() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--all", action="store_true", help="also time the other candidate torch paths")
    parser.add_argument("--model", type=Path, help="a trained model directory (default: untrained student)")
    parser.add_argument(
        "--calibrate", default=str(SHARED_CORRIDOR / "ref"),
        help="int8 calibration source (folder, bag:PATH[:TOPIC], map:DIR); default Corridor ref/",
    )  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument(
        "--accuracy", default=f"corridor:{SHARED_CORRIDOR}" if SHARED_CORRIDOR.is_dir() else "",
        help="dataset spec for the accuracy table ('' to skip); default the shared Corridor copy",
    )  # fmt: skip
    parser.add_argument(
        "--demo", action=argparse.BooleanOptionalAction, default=True,
        help="demo scene loop precision/recall per precision path (renders the scene once, ~1 min per path)",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall: latency (default); cpu: process CPU time, robust to other load on a shared machine "
        "(use with --threads 1: with more threads it sums their work)",
    )  # fmt: skip
    return parser.parse_args()


def load_student(model: Path | None) -> torch.nn.Module:
    if model:
        from tscm_ros.model_io import load_model

        return load_model(model).module
    return build_model("student", seed=0)


def candidate_runners(
    student: torch.nn.Module, student_cl: torch.nn.Module, batches: list[int]
) -> dict[str, Runner]:
    """``--all``: the other candidate torch paths that were tried."""
    runners: dict[str, Runner] = {}
    runners["student frozen (no fold)"] = torch_runner(frozen(student, False, False))
    runners["student frozen CL folded"] = optimized_runner(
        optimize_for_cpu(student, method="frozen-channels-last")
    )
    runners["student frozen CL (no fold)"] = torch_runner(frozen(student, False, True), channels_last=True)
    runners["student folded eager CL"] = torch_runner(
        fold_batch_norms(copy.deepcopy(student)).to(memory_format=torch.channels_last), channels_last=True
    )
    try:
        start = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(student_cl))
        with torch.inference_mode():
            for batch in batches:
                compiled(torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last))
        print(f"torch.compile warm-up took {time.perf_counter() - start:.1f} s")
        runners["student torch.compile CL"] = torch_runner(compiled, channels_last=True)
    except Exception as error:  # inductor needs a working C++ toolchain
        print(f"torch.compile unavailable: {type(error).__name__}: {str(error)[:200]}")
    return runners


def build_runners(
    student: torch.nn.Module, teacher: torch.nn.Module | None, model_dir: Path, args: argparse.Namespace
) -> tuple[dict[str, Runner], dict]:
    """Every timed path (exports the ONNX models to ``model_dir`` on the way); also the int8 record."""
    student_cl = copy.deepcopy(student).to(memory_format=torch.channels_last)
    runners: dict[str, Runner] = {
        "student eager": torch_runner(student),
        "student eager CL": torch_runner(student_cl, channels_last=True),
        "student optimized": optimized_runner(optimize_for_cpu(student)),
    }
    int8_record = prepare_exports(student, model_dir, args)
    runners["student ORT"] = ort_runner(model_dir / "model.onnx", args.threads)
    runners["student ORT int8"] = ort_runner(model_dir / "model.int8.onnx", args.threads)
    runners["student bf16 CL"] = bf16_runner(student_cl)
    if args.all:
        runners.update(candidate_runners(student, student_cl, args.batches))
    if teacher is not None:
        runners["teacher eager"] = torch_runner(teacher)
    return runners, int8_record


def speed_rows(
    runners: dict[str, Runner],
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    flops: dict[str, float],
    args: argparse.Namespace,
) -> list[tuple]:
    """Per batch and path: (name, batch, ms/img, GFLOP/s, max abs diff to eager, speed-up vs eager)."""
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
    return rows


def print_speed_table(
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    flops: dict[str, float],
    gemm: float,
    gemm_after: float,
    rows: list[tuple],
    int8_record: dict,
) -> None:
    print(
        f"\nthreads={args.threads}, clock={args.clock}, torch {torch.__version__}, "
        f"repeats={args.repeats} (median), "
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
    print(
        "\nint8 (student ORT int8): QDQ, Conv (+ its ReLU) in int8 (uint8 activations per tensor, int8 "
        f"weights per channel), {int8_record['calibration']['count']} calibration images; the head fp32"
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


def print_describe_and_threading_tables(model_dir: Path, threads: int, repeats: int) -> None:
    print("\nDescriber.describe(one 640x480 uint8 image), end to end (preprocessing included):\n")
    print("| configuration | ms/img |")
    print("|---|---|")
    for name, ms in time_describe(model_dir, threads, repeats):
        print(f"| {name} | {ms:.1f} |")

    print(
        "\nONNX Runtime threading, batch 1 (blocks of 5 runs per session in turn; CPU ms/img includes what "
        "the session's threads burn after Run returns):\n"
    )
    print("| session | min ms | median ms | CPU ms/img |")
    print("|---|---|---|---|")
    for name, low, median, cpu in threading_rows(model_dir, threads, repeats):
        print(f"| {name} | {low:.1f} | {median:.1f} | {cpu:.1f} |")


def print_accuracy_table(runners: dict[str, Runner], spec: str) -> None:
    compared = {
        name: runners[name]
        for name in ("student eager", "student ORT", "student ORT int8", "student bf16 CL")
    }
    rows, count = accuracy_rows(compared, spec, "student eager")
    print(f"\nAccuracy against eager fp32 on {spec} ({count} images):\n")
    print("| path | cosine min | cosine mean | centred cos min | centred cos mean | R@1 | R@5 |")
    print("|---|---|---|---|---|---|---|")
    for name, agreement, r1, r5 in rows:
        print(
            f"| {name} | {agreement['cosine_min']:.5f} | {agreement['cosine_mean']:.5f} "
            f"| {agreement['centred_cosine_min']:.3f} | {agreement['centred_cosine_mean']:.3f} "
            f"| {r1:.3f} | {r5:.3f} |"
        )


def print_demo_table(model_dir: Path, threads: int, work_dir: Path) -> None:
    rows = demo_rows(model_dir, threads, work_dir)
    print("\nDemo scene loop closures (tscm_demo pipeline, shipped params, auto threshold):\n")
    print(
        "| path | retrieval P | retrieval R | retrieval R@1 | AP | verified P | verified R | verified R@1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, retrieval, verified in rows:
        verified = verified or dict.fromkeys(("precision", "recall", "recall_at_1"), float("nan"))
        print(
            f"| {name} | {retrieval['precision']:.3f} | {retrieval['recall']:.3f} "
            f"| {retrieval['recall_at_1']:.3f} | {retrieval['average_precision']:.3f} "
            f"| {verified['precision']:.3f} | {verified['recall']:.3f} | {verified['recall_at_1']:.3f} |"
        )


def main() -> None:
    args = parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    student = load_student(args.model)
    teacher = None if args.no_teacher else build_model("teacher", seed=0)
    flops = {"student": gflop_per_image(student)}
    if teacher is not None:
        flops["teacher"] = gflop_per_image(teacher)

    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(tmp.name) / "student"
    runners, int8_record = build_runners(student, teacher, model_dir, args)

    gemm = gemm_gflops(args.threads)
    rows = speed_rows(runners, student, teacher, flops, args)
    gemm_after = gemm_gflops(args.threads)

    print_speed_table(args, load_before, flops, gemm, gemm_after, rows, int8_record)
    print_describe_and_threading_tables(model_dir, args.threads, args.repeats)
    if args.accuracy:
        print_accuracy_table(runners, args.accuracy)
    if args.demo:
        print_demo_table(model_dir, args.threads, Path(tmp.name) / "demo")
    tmp.cleanup()


if __name__ == "__main__":
    main()
