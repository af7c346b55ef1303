"""``colcon build`` / ``colcon test`` of the package into a temporary directory (issue 10 item 9).

No system ROS: colcon-core, colcon-ros (ament_python build type) and colcon-python-setup-py come from
requirements-dev.txt, the ROS client libraries from requirements-ros.txt. The install tree must be what
``ros2 run`` / ``ros2 launch`` use: the ament index marker, share/ files and ``lib/tscm_ros/<script>``.
``colcon test`` runs pytest on the package; here on one cheap file (the suite itself runs in CI directly).
About 10-20 s.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("colcon_core", reason="colcon is installed from requirements-dev.txt")
pytest.importorskip("colcon_ros", reason="colcon-ros is installed from requirements-dev.txt")

pytestmark = pytest.mark.colcon

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "tscm_ros"
COLCON_TEST_SUBSET = ["test/test_rosdep_keys.py"]  # what `colcon test` runs here (cheap, no ROS graph)


def colcon_executable() -> str:
    beside = Path(sys.executable).parent / "colcon"
    found = str(beside) if beside.is_file() else shutil.which("colcon")
    if not found:
        pytest.fail("colcon not found (pip install -r requirements-dev.txt)")
    return found


def colcon(base: Path, verb: str, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``colcon <verb>`` on the repository with every output (build, install, log, results) under ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COLCON_"))}
    env["COLCON_HOME"] = str(base / "colcon_home")  # no user defaults.yaml / mixins
    env.pop("PYTHONPATH", None)
    command = [
        colcon_executable(), "--log-base", str(base / "log"), verb, "--base-paths", str(REPO),
        "--build-base", str(base / "build"), "--install-base", str(base / "install"), *arguments,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


def console_scripts(install_prefix: Path) -> list[str]:
    """Console scripts of the installed distribution (the entry points of setup.py)."""
    (entry_points,) = install_prefix.glob("lib/python3*/site-packages/tscm_ros-*info/entry_points.txt")
    parser = configparser.ConfigParser()
    parser.read(entry_points)
    return sorted(parser["console_scripts"])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("colcon")
    colcon(base, "build")
    return base


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    assert config["develop"]["script_dir"] == "$base/lib/tscm_ros"
    assert config["install"]["install_scripts"] == "$base/lib/tscm_ros"


def test_install_tree(built: Path):
    prefix = built / "install" / PACKAGE
    share = prefix / "share" / PACKAGE
    for relative in (
        "package.xml",
        "launch/place_recognition.launch.py",
        "config/place_recognition.yaml",
        "config/fastdds_localhost.xml",
    ):
        assert (share / relative).is_file(), relative
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    scripts = console_scripts(prefix)
    assert {"place_recognition_node", "bag_player", "tscm_build_map"} <= set(scripts)
    for script in scripts:
        executable = prefix / "lib" / PACKAGE / script
        assert executable.is_file() and os.access(executable, os.X_OK), executable
    # the package's modules are in the install tree (not only the source checkout)
    assert list(prefix.glob("lib/python3*/site-packages/tscm_ros/pipelines/build_map.py"))


def test_installed_executable_starts_from_the_sourced_install(built: Path):
    """What ``ros2 run tscm_ros tscm_build_map --help`` does: find the prefix through the ament index of the
    sourced install (AMENT_PREFIX_PATH), run ``lib/tscm_ros/tscm_build_map`` with the install's PYTHONPATH."""
    install = built / "install"
    script = (
        f'. "{install}/setup.sh" && '
        'prefix="$(python -c "from ament_index_python.packages import get_package_prefix as p; '
        "print(p('tscm_ros'))\")\" && "
        'python -c "import tscm_ros; print(tscm_ros.__file__)" && '
        '"$prefix/lib/tscm_ros/tscm_build_map" --help'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLCON_PYTHON_EXECUTABLE"] = sys.executable
    result = subprocess.run(
        ["sh", "-c", script], cwd=built, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    module_file, *help_lines = result.stdout.splitlines()
    assert module_file.startswith(str(install / PACKAGE)), module_file  # imported from the install
    assert help_lines[0].startswith("usage: tscm_build_map"), result.stdout


def test_colcon_test_runs_pytest(built: Path):
    results = built / "test_results"
    colcon(
        built, "test", "--test-result-base", str(results), "--return-code-on-test-failure",
        "--pytest-args", *COLCON_TEST_SUBSET,
    )  # fmt: skip
    suite = ET.parse(results / PACKAGE / "pytest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) >= 2
    assert suite.get("failures") == suite.get("errors") == "0"
    assert all(case.get("classname", "").startswith(PACKAGE) for case in suite.iter("testcase"))
