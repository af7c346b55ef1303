"""The core is importable without rclpy: only tscm_ros.ros may import it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import tscm_ros


def test_core_modules_do_not_import_rclpy() -> None:
    core = sorted(
        info.name
        for info in pkgutil.walk_packages(tscm_ros.__path__, "tscm_ros.")
        if not info.name.startswith("tscm_ros.ros")
    )
    assert "tscm_ros.placemap" in core and "tscm_ros.training.train" in core
    # a fresh interpreter in which importing rclpy fails: every core module must still import
    code = (
        "import sys, importlib\n"
        "sys.modules['rclpy'] = None\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len([m for m in sys.modules if m.startswith('tscm_ros')]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
