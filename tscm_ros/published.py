"""Read and convert checkpoints of the published TSCM code (nubot-nudt/TSCM) to this package's networks.

This is the only module that knows the authors' parameter names. A published checkpoint is a
``torch.save`` dict ``{'epoch', 'step', 'state_dict', 'optimizer', 'scheduler'}`` (or a bare state dict)
of ``TeacherNet`` (``backbone.*``) or ``StudentNet`` (``backboneS.*``, ``var_head.*`` and an unused
teacher copy under ``backbone.*``). It is read with ``torch.load(weights_only=True)``: nothing is unpickled.

This module only reads and maps state dicts; :func:`tscm_ros.model_io.load_published` builds the network
from the result, and ``tscm_convert_published`` (:mod:`tscm_ros.cli.convert_published`) saves it in our
format.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tscm_ros.models import ARCHITECTURES

STUDENT_PREFIX = "backboneS."
VARIANCE_PREFIX = "var_head."
TEACHER_PREFIX = "backbone."
CHECKPOINT_ENTRIES = ("state_dict", "epoch", "step", "optimizer", "scheduler")
RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
VLAD_PARAMS = {
    "cluster_weights": "cluster_weights",
    "cluster_biases": "cluster_biases",
    "cluster_weights2": "centroids",
    "hidden1_weights": "projection",
    "context_gating.gating_weights": "context_gating.gating_weights",
    "context_gating.gating_biases": "context_gating.gating_biases",
}
VIT_BLOCK_PARAMS = {
    "norm1": "ln_1",
    "attn.qkv.weight": "self_attention.in_proj_weight",
    "attn.qkv.bias": "self_attention.in_proj_bias",
    "attn.proj": "self_attention.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.3",
}
TEACHER_MODULES = {  # published teacher sub-module -> ours (the inter-transformer encoder and heads)
    "gem": "gem",
    "linear": "project_vit",
    "linear2": "project_cnn",
    "attn1.q_linear": "fuse_vit.attention.q_linear",
    "attn1.k_linear": "fuse_vit.attention.k_linear",
    "attn1.v_linear": "fuse_vit.attention.v_linear",
    "attn1.out": "fuse_vit.attention.out",
    "ff1.linear_1": "fuse_vit.feed_forward.linear_1",
    "ff1.linear_2": "fuse_vit.feed_forward.linear_2",
    "attn2.q_linear": "fuse_cnn.attention.q_linear",
    "attn2.k_linear": "fuse_cnn.attention.k_linear",
    "attn2.v_linear": "fuse_cnn.attention.v_linear",
    "attn2.out": "fuse_cnn.attention.out",
    "ff2.linear_1": "fuse_cnn.feed_forward.linear_1",
    "ff2.linear_2": "fuse_cnn.feed_forward.linear_2",
}
TEACHER_VLADS = {"net_vlad": "vlad_fused", "net_vlad_R": "vlad_cnn", "net_vlad_V": "vlad_vit"}
# registered in the published teacher but never used in its forward pass
TEACHER_UNUSED = re.compile(r"^(backboneR\.7\.p|net_vlad(_R|_V)?\.bn2\..*)$")


class PublishedCheckpointError(ValueError):
    """A published TSCM checkpoint cannot be read or converted (the message says what and where)."""


def read_published_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Return the state dict of a published checkpoint (wrapped or bare), without a ``module.`` prefix.

    Loads with ``torch.load(map_location="cpu", weights_only=True)``: a file that needs arbitrary objects
    unpickled is refused with :class:`PublishedCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise PublishedCheckpointError(f"published checkpoint {path} does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise PublishedCheckpointError(
            f"{path}: refusing to unpickle arbitrary objects; this file holds more than tensors and plain "
            f"containers (torch.load weights_only=True rejected it: {str(error).splitlines()[0]})"
        ) from error
    except Exception as error:  # truncated / corrupt / not a torch file: the unpickler raises many types
        raise PublishedCheckpointError(
            f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(loaded, Mapping):
        raise PublishedCheckpointError(f"{path}: expected a dict, found {type(loaded).__name__}")
    state_dict = loaded.get("state_dict", loaded)
    if not isinstance(state_dict, Mapping):
        raise PublishedCheckpointError(f"{path}: 'state_dict' entry is a {type(state_dict).__name__}")
    not_tensors = [str(key) for key, value in state_dict.items() if not isinstance(value, Tensor)]
    if not_tensors:
        hint = f" (top-level entries: {sorted(map(str, loaded))})" if state_dict is loaded else ""
        raise PublishedCheckpointError(
            f"{path}: state dict entries that are not tensors: {not_tensors[:10]}{hint}"
        )
    return {_strip_ddp(key): value for key, value in state_dict.items()}


def _strip_ddp(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def detect_arch(state_dict: Mapping[str, Tensor]) -> str:
    """``"student"`` when ``backboneS.*`` keys are present, ``"teacher"`` for ``backbone.*`` only."""
    if any(key.startswith(STUDENT_PREFIX) for key in state_dict):
        return "student"
    if any(key.startswith(TEACHER_PREFIX + "backboneV") for key in state_dict):
        return "teacher"
    raise PublishedCheckpointError(
        "not a published TSCM state dict: neither student (backboneS.*) nor teacher "
        f"(backbone.backboneVV.*) keys; first keys: {list(state_dict)[:5]}"
    )


def _vlad_name(rest: str, our_module: str) -> str | None:
    if rest.startswith("bn2."):
        return None  # constructed but unused in the published forward pass
    return f"{our_module}.{VLAD_PARAMS[rest]}" if rest in VLAD_PARAMS else ""


def _resnet_name(rest: str) -> str:
    child, _, tail = rest.partition(".")
    return f"cnn.{RESNET_CHILDREN[child]}.{tail}" if child in RESNET_CHILDREN and tail else ""


def _student_name(key: str) -> str | None:
    """Our name for a published student key; None = dropped on purpose; "" = not recognised."""
    if key.startswith(VARIANCE_PREFIX):
        return "variance_head." + key[len(VARIANCE_PREFIX) :]
    rest = key[len(STUDENT_PREFIX) :]
    module, _, tail = rest.partition(".")
    if module == "backboneR_Stu":
        return _resnet_name(tail)
    if module == "net_vlad":
        return _vlad_name(tail, "vlad")
    if module == "linear0":
        return "vlad_projection." + tail
    if rest == "gem.p":
        return rest
    if rest.startswith("PatchEmbedding.projection.0."):
        return "patch_embed." + rest.rsplit(".", 1)[-1]
    return ""


def _vit_layout(state_dict: Mapping[str, Tensor], module: str) -> tuple[str, str]:
    """Child indices of (blocks, final norm) in the published ``nn.Sequential(*vit.children()[:-1])``.

    timm >= 0.9: patch_embed, pos_drop, patch_drop, norm_pre, blocks (4), norm (5); older timm puts the
    blocks at 2 and the norm at 3. Detected from the keys.
    """
    prefix = f"{TEACHER_PREFIX}{module}."
    block_index = {
        m.group(1) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.0\.norm1\.", k))
    }
    if len(block_index) != 1:
        raise PublishedCheckpointError(
            f"cannot find the ViT blocks under {prefix}<i>.0.norm1.* (found indices {sorted(block_index)})"
        )
    blocks = block_index.pop()
    norm_index = sorted(
        int(m.group(1))
        for k in state_dict
        if (m := re.match(re.escape(prefix) + r"(\d+)\.weight$", k)) and int(m.group(1)) > int(blocks)
    )
    if not norm_index:
        raise PublishedCheckpointError(f"cannot find the ViT final norm {prefix}<i>.weight after the blocks")
    return blocks, str(norm_index[0])


def _teacher_namer(state_dict: Mapping[str, Tensor]) -> Callable[[str], str | None]:
    blocks, norm = _vit_layout(state_dict, "backboneVV")

    def name(key: str) -> str | None:
        rest = key[len(TEACHER_PREFIX) :]
        module, _, tail = rest.partition(".")
        if TEACHER_UNUSED.match(rest):
            return None
        if module in ("backboneV", "backboneR"):
            return None  # second registration of backboneVV / backboneRR (+ backbone.linear): checked equal
        if module == "backboneRR":
            return _resnet_name(tail)
        if module == "backboneVV":
            child, _, param = tail.partition(".")
            if child == "0" and param.startswith("proj."):
                return "vit.patch_embed." + param[len("proj.") :]
            if child == norm and param in ("weight", "bias"):
                return "vit.norm." + param
            if child == blocks:
                index, _, block_param = param.partition(".")
                for theirs, ours in VIT_BLOCK_PARAMS.items():
                    if block_param == theirs or block_param.startswith(theirs + "."):
                        return f"vit.blocks.{index}.{ours}{block_param[len(theirs) :]}"
            return ""
        if module in TEACHER_VLADS:
            return _vlad_name(tail, TEACHER_VLADS[module])
        owner, _, param = rest.rpartition(".")
        return f"{TEACHER_MODULES[owner]}.{param}" if owner in TEACHER_MODULES else ""

    return name


def _check_duplicates(state_dict: Mapping[str, Tensor]) -> None:
    """The published teacher registers its ViT and ResNet twice; both copies must hold the same tensors.

    ``backboneV`` = ``backboneVV`` children + a mean-pool head + ``backbone.linear`` (its last child);
    ``backboneR`` = ``backboneRR`` children + an unused GeM (child 7) + flatten.
    """
    vit_children = [
        int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.backboneV\.(\d+)\.", k))
    ]
    linear_child = str(max(vit_children)) if vit_children else ""
    mismatched = []
    for key in state_dict:
        match = re.match(r"backbone\.(backboneV|backboneR)\.(\d+)\.(.+)$", key)
        if not match:
            continue
        module, child, param = match.groups()
        if module == "backboneV" and child == linear_child:
            other = f"{TEACHER_PREFIX}linear.{param}"
        elif module == "backboneR" and TEACHER_UNUSED.match(f"backboneR.{child}.{param}"):
            continue
        else:
            other = f"{TEACHER_PREFIX}{module}{module[-1]}.{child}.{param}"
        if other not in state_dict:
            mismatched.append(f"{key} (no {other})")
        elif state_dict[key].shape != state_dict[other].shape or not torch.equal(
            state_dict[key], state_dict[other]
        ):
            mismatched.append(f"{key} != {other}")
    if mismatched:
        raise PublishedCheckpointError(
            f"the two registrations of the published teacher modules differ in {len(mismatched)} entries: "
            f"{mismatched[:5]}"
        )


def convert_published_state_dict(
    state_dict: Mapping[str, Tensor], *, arch: str = "auto", variance_head: bool | None = None
) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
    """Convert a published TSCM state dict to ``(arch, options, our_state_dict)``.

    ``arch="auto"`` detects student/teacher; a student file's unused teacher copy is ignored (pass
    ``arch="teacher"`` to convert that copy instead). ``variance_head`` defaults to "present in the file";
    ``False`` drops ``var_head.*``. Load the result with
    ``build_model(arch, **options).load_state_dict(our_state_dict)``. Raises
    :class:`PublishedCheckpointError` naming missing, unexpected and mis-shaped entries.
    """
    state_dict = {_strip_ddp(key): value for key, value in state_dict.items()}
    arch = detect_arch(state_dict) if arch == "auto" else arch
    if arch == "student":
        has_variance = any(key.startswith(VARIANCE_PREFIX) for key in state_dict)
        options: dict[str, Any] = {"variance_head": has_variance if variance_head is None else variance_head}
        if options["variance_head"] and not has_variance:
            raise PublishedCheckpointError("variance_head=True but the state dict has no var_head.* entries")
        prefixes = (STUDENT_PREFIX, VARIANCE_PREFIX) if options["variance_head"] else (STUDENT_PREFIX,)
        namer: Callable[[str], str | None] = _student_name
    elif arch == "teacher":
        options = {"vit_tokens_only": True}
        prefixes = (TEACHER_PREFIX,)
        _check_duplicates(state_dict)
        namer = _teacher_namer(state_dict)
    else:
        raise PublishedCheckpointError(f"arch must be 'auto', 'student' or 'teacher', got {arch!r}")

    converted: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        if not key.startswith(prefixes):
            continue
        ours = namer(key)
        if ours is None:
            continue
        if not ours or ours in converted:
            unexpected.append(key)
            continue
        converted[ours] = value

    with torch.device("meta"):
        expected = ARCHITECTURES[arch](**options).state_dict()
    missing = [key for key in expected if key not in converted]
    unexpected += [key for key in converted if key not in expected]
    mis_shaped = [
        f"{key}: {tuple(value.shape)} != expected {tuple(expected[key].shape)}"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = [
            f"{label} ({len(items)}): {items[:8]}{' ...' if len(items) > 8 else ''}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mis_shaped),
            )
            if items
        ]
        raise PublishedCheckpointError(f"cannot convert published {arch} state dict; " + "; ".join(parts))
    ordered = {key: converted[key].to(expected[key].dtype).contiguous() for key in expected}
    return arch, options, ordered
