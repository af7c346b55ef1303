"""``tscm_export MODEL [--onnx] [--torchscript] [--rgb] [--int8 --calibrate SOURCE] [--out DIR]``.

The files are written by :mod:`tscm_ros.export` (ONNX, TorchScript, the uint8-input ONNX) and
:mod:`tscm_ros.quantize` (int8 ONNX, its calibration record in ``model.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tscm_ros.cli.common import fail, setup_logging
from tscm_ros.onnx_io import DEFAULT_OPSET, ONNX_FILE, onnx_fingerprint

PROG = "tscm_export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a tscm_ros model (directory, model.json or published checkpoint) to ONNX "
        "(model.onnx, dynamic batch), TorchScript (model.ts), an in-graph-preprocessing ONNX taking uint8 "
        "camera images (model.rgb.onnx) and/or int8 ONNX (model.int8.onnx for the CPU, "
        "model.int8.trt.onnx for TensorRT).",
    )
    parser.add_argument("model", type=Path, help="model directory, its model.json, or a published .pth.tar")
    parser.add_argument("--onnx", action="store_true", help="write model.onnx")
    parser.add_argument("--torchscript", action="store_true", help="write model.ts")
    parser.add_argument(
        "--rgb", action="store_true",
        help="write model.rgb.onnx (and model.int8.rgb.onnx with an int8 model): uint8 (B,H,W,3) input",
    )  # fmt: skip
    parser.add_argument("--int8", action="store_true", help="write model.int8.onnx (needs --calibrate)")
    parser.add_argument(
        "--calibrate", metavar="SOURCE",
        help="int8 calibration images: a folder of images, bag:PATH[:TOPIC] or map:MAP_DIR",
    )  # fmt: skip
    parser.add_argument("--calibration-images", type=int, default=64, metavar="N", help="default 64")
    parser.add_argument(
        "--held-out", type=int, default=None, metavar="M",
        help="further images for the int8-vs-fp32 accuracy check (default max(8, N/4))",
    )  # fmt: skip
    parser.add_argument(
        "--int8-exclude", nargs="+", metavar="NODE",
        help="ONNX node names or name prefixes to keep in fp32 (e.g. /cnn/layer3/layer3.5/)",
    )  # fmt: skip
    parser.add_argument(
        "--min-cosine", type=float, default=0.99,
        help="refuse the int8 export when a held-out image's cosine to fp32 is lower (default 0.99)",
    )  # fmt: skip
    parser.add_argument("--no-tensorrt-int8", action="store_true", help="skip model.int8.trt.onnx")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for calibration")
    parser.add_argument("--out", type=Path, help="output directory (default: the model directory)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written, 1 int8 export refused or impossible, 2 unreadable model or bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if not (args.onnx or args.torchscript or args.rgb or args.int8):
        parser.error("nothing to do: give --onnx, --torchscript, --rgb and/or --int8")
    if args.int8 and not args.calibrate:
        parser.error("--int8 needs --calibrate SOURCE (a folder of images, bag:PATH[:TOPIC] or map:MAP_DIR)")
    from tscm_ros.export import export_onnx, export_torchscript
    from tscm_ros.model_io import load_model

    try:
        model = load_model(args.model)
    except (ValueError, OSError) as error:
        return fail(PROG, error, code=2)
    out_dir = args.out or (args.model if args.model.is_dir() else args.model.parent)
    if args.onnx:
        path = export_onnx(model, out_dir / ONNX_FILE, opset=args.opset, dynamo=args.dynamo)
        print(f"wrote {path} (fingerprint {model.fingerprint})")
    if args.torchscript:
        path = export_torchscript(model, out_dir / "model.ts")
        print(f"wrote {path} (fingerprint {model.fingerprint})")
    if args.int8:
        try:
            _export_int8(args, model, out_dir)
        except (ValueError, OSError) as error:  # bad source, no frames, accuracy check failed
            return fail(PROG, error, code=1)
    if args.rgb:
        _export_rgb(args, model, out_dir)
    return 0


def _export_rgb(args: argparse.Namespace, model, out_dir: Path) -> None:
    """--rgb: model[.int8].rgb.onnx from the fp32 (re-exported when stale) and the int8 ONNX files."""
    from tscm_ros.export import export_onnx, export_rgb_onnx, rgb_file_name
    from tscm_ros.quantize import INT8_FILE

    if onnx_fingerprint(out_dir / ONNX_FILE) != model.fingerprint:
        export_onnx(model, out_dir / ONNX_FILE, opset=args.opset, dynamo=args.dynamo)
        print(f"wrote {out_dir / ONNX_FILE} (fingerprint {model.fingerprint})")
    for name in (ONNX_FILE, INT8_FILE):
        if onnx_fingerprint(out_dir / name) == model.fingerprint:
            path = export_rgb_onnx(out_dir / name, out_dir / rgb_file_name(name))
            print(f"wrote {path} (uint8 (B,H,W,3) input, preprocessing in the graph)")


def _export_int8(args: argparse.Namespace, model, out_dir: Path) -> Path:
    """--int8: calibrate, quantize, check, write model.int8(.trt).onnx, record in model.json."""
    from tscm_ros.export import export_onnx
    from tscm_ros.model_io import CONFIG_FILE, read_model_config, record_export
    from tscm_ros.quantize import export_int8, load_calibration_set

    fp32 = out_dir / ONNX_FILE
    if onnx_fingerprint(fp32) != model.fingerprint:
        export_onnx(model, fp32, opset=args.opset)
        print(f"wrote {fp32} (the fp32 reference for int8; fingerprint {model.fingerprint})")
    calibration = load_calibration_set(
        args.calibrate, args.calibration_images, args.held_out, input_size=tuple(model.module.input_size)
    )
    print(
        f"calibrating on {len(calibration.calibration)} images from {args.calibrate} "
        f"({len(calibration.held_out)} held out for the accuracy check)"
    )
    record = export_int8(
        fp32, out_dir, calibration, exclude=args.int8_exclude or (), min_cosine=args.min_cosine,
        tensorrt=not args.no_tensorrt_int8, num_threads=args.threads,
    )  # fmt: skip
    accuracy = record["accuracy"]
    print(
        f"wrote {out_dir / record['file']}"
        + (f" and {out_dir / record['tensorrt_file']}" if record["tensorrt_file"] else "")
        + f": cosine to fp32 on {accuracy['images']} held-out images min {accuracy['cosine_min']:.5f} "
        f"mean {accuracy['cosine_mean']:.5f} (centred min {accuracy['centred_cosine_min']:.3f} "
        f"mean {accuracy['centred_cosine_mean']:.3f})"
    )
    config_path = out_dir / CONFIG_FILE
    if config_path.is_file() and read_model_config(out_dir)["fingerprint"] == model.fingerprint:
        record_export(out_dir, "int8", record)
        print(f"recorded the int8 export in {config_path}")
    else:  # --out elsewhere or a published checkpoint: keep the record beside the file
        side = out_dir / "model.int8.json"
        side.write_text(json.dumps({"fingerprint": model.fingerprint, **record}, indent=2) + "\n")
        print(f"recorded the int8 export in {side} (no model.json of this model in {out_dir})")
    return out_dir / record["file"]


if __name__ == "__main__":
    sys.exit(main())
