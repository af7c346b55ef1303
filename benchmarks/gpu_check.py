"""GPU check (run only where an NVIDIA GPU is available): TensorRT fp16/int8 and CUDA torch vs CPU fp32.

    scripts/gpu_check.sh [--model DIR] [--calibrate SOURCE] [--images N] [--repeats 20]

Prints, per path, ms/img at batch 1 and 8 (``Describer.describe`` on 640x480 uint8 images, end to end,
median after warm-up) and the per-image cosine of its descriptors to ONNX Runtime CPU fp32 (min/mean):

  torch cuda fp32 / fp16 / bf16     eager PyTorch on the GPU (fp16/bf16 autocast)
  tensorrt fp32 / fp16 / int8       ONNX Runtime TensorRT EP (engine cache in the model dir's trt_cache/;
                                    int8 = model.int8.trt.onnx, explicit QDQ from the same calibration)

A path that cannot run prints SKIPPED with the reason (e.g. no TensorRT EP in this onnxruntime). Without
``--model`` the seeded untrained student is used. Calibration defaults to ../shared/data/corridor/ref when
present, else 64 synthetic smooth images (then the int8 accuracy is only indicative).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORRIDOR = REPO.parent / "shared" / "data" / "corridor"


def synthetic_images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(5, 60, 3)
        phase = rng.uniform(0, 6.3, 3)
        rgb = np.stack([128 + 100 * np.sin(x / a + phase[0]), 128 + 100 * np.cos(y / b + phase[1]),
                        128 + 100 * np.sin((x + y) / c + phase[2])], axis=2)  # fmt: skip
        images.append(np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8))
    return images


def test_images(count: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((CORRIDOR / "query").glob("*.jpg"))
    if files:
        picked = files[:: max(1, len(files) // count)][:count]
        return [np.asarray(Image.open(f).convert("RGB").resize((640, 480))) for f in picked]
    return synthetic_images(count, seed=1)


def timed(describer, images: list[np.ndarray], batch: int, repeats: int) -> float:
    stack = np.stack(images[:batch])
    for _ in range(3):
        describer.describe(stack)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        describer.describe(stack)  # returns numpy: the GPU work is finished
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: untrained seeded student)")
    parser.add_argument("--calibrate", help="int8 calibration source (default: Corridor ref/ or synthetic)")
    parser.add_argument("--images", type=int, default=16, help="images for the parity check (default 16)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of skipped paths")
    return parser.parse_args()


def calibration_set(calibrate: str | None, work_dir: Path):
    """The int8 calibration set: ``--calibrate``, else Corridor ref/, else 64 synthetic images."""
    from tscm_ros.quantize import load_calibration_set

    if calibrate:
        return load_calibration_set(calibrate, 64)
    if (CORRIDOR / "ref").is_dir():
        return load_calibration_set(str(CORRIDOR / "ref"), 64)
    folder = work_dir / "calibration"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(synthetic_images(80, seed=2)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    calibration = load_calibration_set(str(folder), 64)
    print("calibration: 64 synthetic images (no Corridor copy here): int8 accuracy only indicative")
    return calibration


def prepare_model(args: argparse.Namespace, work_dir: Path) -> Path:
    """Save the model, its ONNX export and its int8 export under ``work_dir``; return the model dir."""
    from tscm_ros.export import export_onnx
    from tscm_ros.model_io import load_model, record_export, save_model
    from tscm_ros.models import build_model
    from tscm_ros.quantize import export_int8

    model_dir = work_dir / "model"
    loaded = load_model(args.model) if args.model else None
    model = loaded.module if loaded else build_model("student", seed=0)
    save_model(model, model_dir, provenance=(loaded.provenance if loaded else "") or "gpu_check")
    export_onnx(model, model_dir / "model.onnx")
    calibration = calibration_set(args.calibrate, work_dir)
    started = time.perf_counter()
    record = export_int8(model_dir / "model.onnx", model_dir, calibration)
    record_export(model_dir, "int8", record)
    print(f"int8 export {time.perf_counter() - started:.0f} s, CPU held-out cosine min "
          f"{record['accuracy']['cosine_min']:.5f}")  # fmt: skip
    return model_dir


PATHS = {
    "cpu onnxruntime fp32 (reference)": dict(backend="onnxruntime", device="cpu", precision="fp32"),
    "cpu onnxruntime int8": dict(backend="onnxruntime", device="cpu", precision="int8"),
    "torch cuda fp32": dict(backend="torch", device="cuda", precision="fp32"),
    "torch cuda fp16": dict(backend="torch", device="cuda", precision="fp16"),
    "torch cuda bf16": dict(backend="torch", device="cuda", precision="bf16"),
    "tensorrt fp32": dict(backend="tensorrt", device="cuda", precision="fp32"),
    "tensorrt fp16": dict(backend="tensorrt", device="cuda", precision="fp16"),
    "tensorrt int8": dict(backend="tensorrt", device="cuda", precision="int8"),
}


def measure_paths(args: argparse.Namespace, model_dir: Path) -> tuple[list[tuple], int]:
    """Time and compare every path of ``PATHS`` to ONNX Runtime CPU fp32; return (rows, failures)."""
    from tscm_ros.describer import create_describer
    from tscm_ros.quantize import descriptor_agreement

    images = test_images(max(args.images, 8))
    reference_describer = create_describer(model_dir, backend="onnxruntime", device="cpu", precision="fp32")
    reference = reference_describer.describe(images)
    rows, failures = [], 0
    for name, options in PATHS.items():
        try:
            start = time.perf_counter()
            describer = create_describer(model_dir, batch_size=8, **options)
            first = describer.describe(images[:1])  # TensorRT builds its engine on the first run
            setup = time.perf_counter() - start
            agreement = descriptor_agreement(describer.describe(images), reference)
            ms1 = timed(describer, images, 1, args.repeats)
            ms8 = timed(describer, images, 8, max(3, args.repeats // 4))
            rows.append((name, ms1, ms8, agreement, setup, describer.label))
            assert first.shape == (1, describer.dim)
        except Exception as error:  # report and go on: one table for every path
            failures += 1
            print(f"SKIPPED {name}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            if args.verbose:
                traceback.print_exc()
    return rows, failures


def print_table(rows: list[tuple]) -> None:
    print("\n| path | ms/img batch 1 | ms/img batch 8 | cos min | cos mean | centred cos min | setup s |")
    print("|---|---|---|---|---|---|---|")
    for name, ms1, ms8, agreement, setup, _ in rows:
        print(
            f"| {name} | {ms1:.2f} | {ms8:.2f} | {agreement['cosine_min']:.5f} | "
            f"{agreement['cosine_mean']:.5f} | {agreement['centred_cosine_min']:.3f} | {setup:.1f} |"
        )
    for name, *_, label in rows:
        print(f"# {name}: {label}")


def main() -> int:
    args = parse_args()

    import onnxruntime as ort
    import torch

    print(f"torch {torch.__version__} cuda={torch.cuda.is_available()} "
          f"({torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}); "
          f"onnxruntime {ort.__version__} providers {ort.get_available_providers()}")  # fmt: skip
    work = tempfile.TemporaryDirectory(prefix="tscm_gpu_check_")
    model_dir = prepare_model(args, Path(work.name))
    rows, failures = measure_paths(args, model_dir)
    print_table(rows)
    work.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
