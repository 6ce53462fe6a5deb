#!/usr/bin/env bash
# Build the one-folder desktop app dist/lowbit-studio/ with PyInstaller.
#
#   bash packaging/build.sh
#
# Python environment used for the build (the bundle contains *its* packages):
#   * $BUILD_VENV if set (a venv folder; created if missing), else
#   * the project venv .venv/ if it exists (the usual case), else
#   * build/venv/, created here: the project with its GUI extra and a CPU-only
#     torch from $TORCH_INDEX_URL (default: the PyTorch CPU wheel index), so
#     that no CUDA libraries end up in the bundle.
# Output: dist/lowbit-studio/ (work files in build/pyinstaller/); both are git-ignored.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# PyInstaller 6.22.3 supports Python 3.8-3.15 and PySide6 6.12 (its Qt hooks
# live in PyInstaller itself); the contrib hooks cover torch/transformers/pyqtgraph.
PYINSTALLER_PIN="pyinstaller==6.22.3"
HOOKS_CONTRIB_PIN="pyinstaller-hooks-contrib==2026.9"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

if [[ -n "${BUILD_VENV:-}" ]]; then
    VENV="$BUILD_VENV"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    VENV="$REPO/.venv"
else
    VENV="$REPO/build/venv"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating build venv $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install torch --index-url "$TORCH_INDEX_URL"
    "$VENV/bin/python" -m pip install -e "$REPO[gui]"
fi
PY="$VENV/bin/python"
echo "== build environment: $VENV ($("$PY" -V 2>&1))"

echo "== installing $PYINSTALLER_PIN $HOOKS_CONTRIB_PIN"
"$PY" -m pip install --quiet "$PYINSTALLER_PIN" "$HOOKS_CONTRIB_PIN"

# The demo model is part of the app; refuse to build a bundle without it.
if [[ ! -f "$REPO/resources/demo-model/config.json" ]]; then
    echo "resources/demo-model is missing; rebuild it with: python -m engine.demo train" >&2
    exit 1
fi

echo "== running PyInstaller (several minutes)"
start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean \
    --distpath "$REPO/dist" \
    --workpath "$REPO/build/pyinstaller" \
    "$REPO/packaging/lowbit-studio.spec"
end=$(date +%s)

APP="$REPO/dist/lowbit-studio"
echo
echo "== built $APP in $((end - start)) s"
echo "== size: $(du -sh "$APP" | cut -f1) on disk, $(find "$APP" -type f | wc -l) files"
echo "== to make a tarball: tar -C dist -czf lowbit-studio-linux.tar.gz lowbit-studio"
echo "== try it: $APP/lowbit-studio"
