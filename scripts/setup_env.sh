#!/usr/bin/env bash
# Idempotent set-up: creates .venv at the repository root and installs tscm_ros with its pinned deps.
# Installs the ROS 2 wheels only when no system ROS 2 is sourced (ROS_DISTRO unset).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if [ -n "${ROS_DISTRO:-}" ]; then
    "$py" -m venv --system-site-packages .venv   # see the system's rclpy
  else
    "$py" -m venv .venv
  fi
fi
stamp=.venv/.tscm_setup_stamp
want="$(cat requirements.txt requirements-ros.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)${ROS_DISTRO:-wheels}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
reqs=(-r requirements.txt -r requirements-dev.txt)
if [ -z "${ROS_DISTRO:-}" ]; then reqs+=(-r requirements-ros.txt); fi
.venv/bin/python -m pip install -q "${reqs[@]}"
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
