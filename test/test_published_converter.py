"""Reading and converting published TSCM checkpoints: layouts, prefixes, errors, refusal to unpickle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from models_reference import build_state_dict, published_teacher_state_dict

from tscm_ros.published import (
    PublishedCheckpointError,
    convert_published_state_dict,
    read_published_checkpoint,
)


@pytest.fixture(scope="module")
def student_published(reference_json) -> dict[str, torch.Tensor]:
    """The published student's own entries (backboneS.*, var_head.*), without its unused teacher copy."""
    keys = reference_json["student"]["keys"]
    return build_state_dict(keys, lambda name: name.startswith(("backboneS.", "var_head.")))


@pytest.fixture(scope="module")
def teacher_published(shared_dir) -> dict[str, torch.Tensor]:
    return published_teacher_state_dict(str(shared_dir / "reference" / "tscm_official_reference.json"))


@pytest.fixture(scope="module")
def teacher_converted(teacher_published):
    return convert_published_state_dict(teacher_published)


def _published_checkpoint(state_dict: dict) -> dict:
    """What the published trainer's torch.save writes (Adam + ExponentialLR states included)."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=1e-5, weight_decay=1e-3)
    param.grad = torch.ones(3)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)
    return {
        "epoch": 3,
        "step": 120,
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def test_wrapped_bare_and_ddp_prefixed_files_read_the_same(tmp_path: Path):
    state = {"backboneS.gem.p": torch.tensor([3.0]), "var_head.0.bias": torch.arange(4.0)}
    torch.save(_published_checkpoint(state), tmp_path / "wrapped.pth.tar")
    torch.save(state, tmp_path / "bare.pth")
    torch.save(_published_checkpoint({f"module.{k}": v for k, v in state.items()}), tmp_path / "ddp.pth.tar")
    for name in ("wrapped.pth.tar", "bare.pth", "ddp.pth.tar"):
        read = read_published_checkpoint(tmp_path / name)
        assert list(read) == list(state)
        assert all(torch.equal(read[k], state[k]) for k in state)


class _Marker:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Options:  # a plain class instance, like an argparse-style options object saved with a model
    def __init__(self) -> None:
        self.lr = 1e-5


def test_code_execution_pickle_refused_and_not_executed(tmp_path: Path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"backboneS.gem.p": torch.ones(1)}, "opt": _Marker(marker)}, path)
    with pytest.raises(PublishedCheckpointError, match="refusing to unpickle arbitrary objects") as info:
        read_published_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_class_instance_refused(tmp_path: Path):
    path = tmp_path / "options.pth"
    torch.save({"state_dict": {"backboneS.gem.p": torch.ones(1)}, "opt": _Options()}, path)
    with pytest.raises(PublishedCheckpointError, match="refusing to unpickle"):
        read_published_checkpoint(path)


def test_unreadable_files_rejected_clearly(tmp_path: Path):
    with pytest.raises(PublishedCheckpointError, match="does not exist"):
        read_published_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PublishedCheckpointError, match="garbage.pth"):
        read_published_checkpoint(garbage)
    torch.save({"state_dict": {"a": torch.ones(1), "b": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(PublishedCheckpointError, match="not tensors: \\['b'\\]"):
        read_published_checkpoint(tmp_path / "mixed.pth")


def test_student_conversion_options_and_variance_head(student_published):
    arch, options, ours = convert_published_state_dict(student_published)
    assert (arch, options) == ("student", {"variance_head": True})
    assert torch.equal(ours["vlad.centroids"], student_published["backboneS.net_vlad.cluster_weights2"])
    assert torch.equal(ours["vlad_projection.weight"], student_published["backboneS.linear0.weight"])
    assert not any("bn2" in key for key in ours if key.startswith("vlad."))
    arch, options, ours = convert_published_state_dict(student_published, variance_head=False)
    assert options == {"variance_head": False} and not any(k.startswith("variance_head") for k in ours)
    no_head = {k: v for k, v in student_published.items() if not k.startswith("var_head.")}
    assert convert_published_state_dict(no_head)[1] == {"variance_head": False}
    with pytest.raises(PublishedCheckpointError, match="no var_head"):
        convert_published_state_dict(no_head, variance_head=True)


def test_ddp_prefix_stripped_in_conversion(student_published):
    prefixed = {f"module.{k}": v for k, v in student_published.items()}
    _, _, ours = convert_published_state_dict(prefixed)
    assert torch.equal(ours["gem.p"], student_published["backboneS.gem.p"])


def test_missing_unexpected_and_misshaped_entries_named(student_published):
    missing = dict(student_published)
    del missing["backboneS.net_vlad.hidden1_weights"]
    with pytest.raises(PublishedCheckpointError, match=r"missing \(1\): \['vlad.projection'\]"):
        convert_published_state_dict(missing)
    extra = dict(student_published, **{"backboneS.extra_head.weight": torch.ones(2)})
    with pytest.raises(
        PublishedCheckpointError, match=r"unexpected \(1\): \['backboneS.extra_head.weight'\]"
    ):
        convert_published_state_dict(extra)
    shaped = dict(student_published, **{"backboneS.linear0.bias": torch.zeros(512)})
    with pytest.raises(
        PublishedCheckpointError, match=r"vlad_projection.bias: \(512,\) != expected \(1024,\)"
    ):
        convert_published_state_dict(shaped)
    with pytest.raises(PublishedCheckpointError, match="neither student"):
        convert_published_state_dict({"fc.weight": torch.ones(2, 2)})


def test_student_file_teacher_copy_ignored_or_converted_on_request(student_published, teacher_published):
    full = dict(teacher_published, **student_published)  # a published StudentNet state dict
    _, _, from_full = convert_published_state_dict(full)
    _, _, from_own = convert_published_state_dict(student_published)
    assert from_full.keys() == from_own.keys()
    assert all(torch.equal(from_full[k], from_own[k]) for k in from_own)
    arch, _, teacher = convert_published_state_dict(full, arch="teacher")
    assert arch == "teacher" and "vit.blocks.11.self_attention.in_proj_weight" in teacher


def test_teacher_mapping_and_duplicate_copies(teacher_published, teacher_converted):
    arch, options, ours = teacher_converted
    assert (arch, options) == ("teacher", {"vit_tokens_only": True})
    qkv = teacher_published["backbone.backboneVV.4.3.attn.qkv.weight"]
    assert torch.equal(ours["vit.blocks.3.self_attention.in_proj_weight"], qkv)
    assert torch.equal(ours["gem.p"], teacher_published["backbone.gem.p"])
    broken = dict(teacher_published)
    broken["backbone.backboneV.4.0.norm1.weight"] = broken["backbone.backboneV.4.0.norm1.weight"] + 1
    with pytest.raises(
        PublishedCheckpointError, match=r"backbone.backboneV.4.0.norm1.weight != backbone.backboneVV"
    ):
        convert_published_state_dict(broken)
    broken = dict(teacher_published)
    broken["backbone.backboneV.9.bias"] = torch.zeros(512)
    with pytest.raises(PublishedCheckpointError, match=r"backboneV.9.bias != backbone.linear.bias"):
        convert_published_state_dict(broken)


def test_older_timm_layout_blocks_at_index_two(teacher_published, teacher_converted):
    """timm < 0.9 (no patch_drop / norm_pre): blocks at child 2, final norm at 3, backboneV linear at 6."""
    renumber = {
        "backbone.backboneVV.": {"4": "2", "5": "3"},
        "backbone.backboneV.": {"4": "2", "5": "3", "9": "6"},
    }
    older = {}
    for key, value in teacher_published.items():
        for prefix, moves in renumber.items():
            if key.startswith(prefix):
                child, _, rest = key[len(prefix) :].partition(".")
                key = f"{prefix}{moves.get(child, child)}.{rest}"
                break
        older[key] = value
    assert "backbone.backboneVV.2.0.norm1.weight" in older
    _, _, converted_older = convert_published_state_dict(older)
    _, _, converted = teacher_converted
    assert converted_older.keys() == converted.keys()
    assert all(torch.equal(converted_older[k], converted[k]) for k in converted)


def test_console_script_converts_to_our_format(tmp_path: Path, student_published, capsys):
    from tscm_ros.cli.convert_published import main
    from tscm_ros.model_io import load_model

    source = tmp_path / "ckpt_e_3.pth.tar"
    torch.save(_published_checkpoint({f"module.{k}": v for k, v in student_published.items()}), source)
    assert main([str(source), str(tmp_path / "out"), "--no-variance-head"]) == 0
    assert "converted published student" in capsys.readouterr().out
    model = load_model(tmp_path / "out")
    assert model.arch == "student" and model.options == {"variance_head": False}
    assert torch.equal(
        model.module.state_dict()["vlad.centroids"], student_published["backboneS.net_vlad.cluster_weights2"]
    )
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"x": torch.ones(1)}, "opt": _Options()}, bad)
    assert main([str(bad), str(tmp_path / "out2")]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
