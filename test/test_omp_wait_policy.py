"""The ROS programs make OpenMP threads wait passively, set before any OpenMP runtime is loaded.

Spinning OpenMP threads (torch, faiss) stalled the node at 30 Hz with RootSIFT verification on 2 cores
(see tscm_ros/ros/__init__.py); the setting only works when it is in the environment before libgomp loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, sys
def gomp_loaded():
    return "libgomp" in open("/proc/self/maps").read()
import tscm_ros.ros
after_package = {"env": os.environ.get("OMP_WAIT_POLICY"), "gomp": gomp_loaded(),
                 "modules": [m for m in ("torch", "faiss") if m in sys.modules]}
import tscm_ros.ros.place_recognition_node
print(json.dumps({"after_package": after_package, "after_node": {"gomp": gomp_loaded(),
      "env": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def _probe(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_passive_before_any_openmp_runtime_loads() -> None:
    result = _probe(None)
    assert result["after_package"] == {"env": "PASSIVE", "gomp": False, "modules": []}
    # the node module loads faiss (libgomp) at import: by then the policy is in the environment
    assert result["after_node"] == {"gomp": True, "env": "PASSIVE"}


def test_a_policy_set_by_the_user_is_kept() -> None:
    result = _probe("ACTIVE")
    assert result["after_node"]["env"] == "ACTIVE"
