"""ONNX Runtime session options (tscm_ros.ort_options): what is set, and that the Describer uses them."""

from __future__ import annotations

import os

import pytest

from tscm_ros.ort_options import SPIN_ENV, ort_session_options, physical_cores, session_settings


def test_defaults_no_spinning_sequential(monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    settings = session_settings()
    assert settings["intra_op_num_threads"] == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert settings["inter_op_num_threads"] == 1 and settings["execution_mode"] == "ORT_SEQUENTIAL"
    assert settings["config"] == {"session.intra_op.allow_spinning": "0"}


def test_spin_inside_run_only(monkeypatch):
    spin = session_settings(2, spin=True)["config"]
    assert spin == {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
    assert session_settings(1, spin=True)["config"] == {"session.intra_op.allow_spinning": "0"}  # no pool
    monkeypatch.setenv(SPIN_ENV, "1")
    assert session_settings(2)["config"]["session.intra_op.allow_spinning"] == "1"
    assert session_settings(2, spin=False)["config"]["session.intra_op.allow_spinning"] == "0"
    with pytest.raises(ValueError, match="num_threads"):
        session_settings(0)


def test_options_object_carries_the_settings(monkeypatch):
    import onnxruntime as ort

    monkeypatch.delenv(SPIN_ENV, raising=False)
    options = ort_session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = ort_session_options(2, spin=True)
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1"


def test_describer_session_uses_them(tmp_path, monkeypatch):
    from tscm_ros.cli.export import main
    from tscm_ros.describer import create_describer
    from tscm_ros.model_io import save_model
    from tscm_ros.models import build_model

    monkeypatch.delenv(SPIN_ENV, raising=False)
    model_dir = save_model(build_model("student", seed=0), tmp_path / "m")
    assert main([str(model_dir), "--onnx"]) == 0
    describer = create_describer(model_dir, backend="onnxruntime", device="cpu", num_threads=2)
    options = describer._session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
