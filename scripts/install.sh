#!/usr/bin/env bash
# Set up .venv with MVCTEnhance, its web page (the 'web' extra: mvct-enhance serve) and its test tools,
# every version pinned (constraints.txt).
# torch is installed first and pinned (CPU build on these machines): an unpinned torch would pull
# gigabytes of CUDA wheels. On a GPU workstation set TORCH_INDEX_URL to a CUDA wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade "pip>=23"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip_install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"
else
  pip_install "torch==${TORCH_VERSION}"
fi
pip_install -c constraints.txt -e ".[test,web]"
.venv/bin/python -c "import torch, MVCTEnhanceLib; print('MVCTEnhance', MVCTEnhanceLib.__version__, '| torch', torch.__version__)"
.venv/bin/python -c "import MVCTEnhanceWeb, sys; p = MVCTEnhanceWeb.missingExtra(); print(p or 'web page: ok'); sys.exit(bool(p))"
# The web page's test drives Debian's Chromium (Playwright never downloads a browser here).
if [ ! -x "${MVCTENHANCE_CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "note: ${MVCTENHANCE_CHROMIUM:-/usr/bin/chromium} is missing; Testing/test_web.py needs it:" \
       "apt-get install chromium (as root; .ci/run does)" >&2
fi
