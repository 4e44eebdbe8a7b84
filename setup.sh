#!/usr/bin/env bash
# Set up the project in ./.venv: PyTorch (CPU build, pinned), then the project, editable.
#   ./setup.sh         the runtime plus the [train] and [demo] extras (`pip install -e '.[train,demo]'`):
#                      what the README's commands need (`sentiment demo`, `sentiment broker` with
#                      `sentiment worker`, whose default demo model is trained on first use; the trainers)
#   ./setup.sh --dev   `pip install -e '.[dev]'`: all of that, the test and lint tools, and Debian's
#                      prometheus (the ops tests), redis-server (the cache tests) and, in .venv-emb,
#                      infinity-emb (the embeddings server of the remote-backend tests)
# The worker alone needs neither extra: `pip install .` (the Docker images) installs the runtime only.
# Safe to run again; it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")"

extras="[train,demo]"
dev=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]" && dev=1

emb_pid=""
if [[ -n "$dev" && ! -x .venv-emb/bin/infinity_emb ]]; then
  # A real OpenAI-compatible embeddings server for the remote-backend tests
  # (tests/integration/test_remote_embeddings.py): infinity-emb pins sentence-transformers<4 and
  # numpy<2, so it gets a venv of its own (about 50 s; torch is the CPU wheel on disk again). It is
  # installed in the background while .venv is (pip waits on the network and the disk more than on
  # the CPU), and waited for before this script ends; its output is shown only if it fails.
  echo "• installing infinity-emb in .venv-emb, in the background (the embeddings server of the remote-backend tests)" >&2
  emb_log=$(mktemp)
  (
    set -e
    [[ -x .venv-emb/bin/python ]] || python3 -m venv .venv-emb
    .venv-emb/bin/python -m pip install -q --upgrade pip
    .venv-emb/bin/python -m pip install -q torch==2.13.0
    .venv-emb/bin/python -m pip install -q 'infinity-emb[server,torch]==0.0.78' 'transformers>=4.51,<5'
  ) >"$emb_log" 2>&1 &
  emb_pid=$!
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "• creating .venv" >&2
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pinned first: an unpinned torch (asked for by transformers/peft) would pull a multi-GB CUDA build.
echo "• installing torch==2.13.0" >&2
.venv/bin/python -m pip install -q torch==2.13.0
echo "• installing the project${extras}" >&2
.venv/bin/python -m pip install -q -e ".${extras}"
if [[ -n "$dev" ]] && ! command -v promtool >/dev/null; then
  # The ops tests run a real Prometheus server and promtool against ops/prometheus.
  echo "• installing Debian's prometheus (for the ops tests)" >&2
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || { $sudo_ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
         $sudo_ apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  # the package starts a system service; the tests start their own servers
  $sudo_ service prometheus stop >/dev/null 2>&1 || true
fi
if [[ -n "$dev" ]] && ! command -v redis-server >/dev/null; then
  # The cache tests (tests/integration/test_cache_redis.py) start, kill and restart a real Redis.
  echo "• installing Debian's redis-server (for the cache tests)" >&2
  sudo_=""; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q --no-install-recommends redis-server >/dev/null \
    || { $sudo_ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
         $sudo_ apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
  # the package starts a system service; the tests start their own servers
  $sudo_ service redis-server stop >/dev/null 2>&1 || true
fi
if [[ -n "$emb_pid" ]]; then
  if ! wait "$emb_pid"; then
    cat "$emb_log" >&2
    echo "setup.sh: installing infinity-emb in .venv-emb failed (its pip output is above)" >&2
    exit 1
  fi
  rm -f "$emb_log"
  echo "• .venv-emb ready" >&2
fi
echo "• ready: .venv/bin/sentiment --help" >&2
