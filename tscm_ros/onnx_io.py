"""Names of our ONNX files, inputs, outputs and metadata keys (shared by export, quantize and the describers).

A small leaf module so that :mod:`tscm_ros.export` and :mod:`tscm_ros.quantize` need not import each other.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_OPSET = 17
INPUT_NAME = "images"  # float32 (B, 3, H, W), ImageNet-normalised
RGB_INPUT_NAME = "rgb"  # uint8 (B, H, W, 3), preprocessing in the graph (model.rgb.onnx)
OUTPUT_NAME = "descriptors"  # float32 (B, D), L2-normalised
METADATA_PREFIX = "tscm_ros."
ONNX_FILE = "model.onnx"
RGB_ONNX_FILE = "model.rgb.onnx"


def onnx_fingerprint(path: Path) -> str | None:
    """The model fingerprint in an ONNX file's metadata; None when the file does not exist or has none."""
    import onnx

    if not path.is_file():
        return None
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}.get(METADATA_PREFIX + "fingerprint")
