#!/usr/bin/env bash
# Install the Lowbit Studio desktop entry and icon for the current user.
#
#   bash packaging/install-desktop-entry.sh             # uninstall: --uninstall
#
# Installs
#   ~/.local/share/applications/lowbit-studio.desktop
#   ~/.local/share/icons/hicolor/scalable/apps/lowbit-studio.svg
# The entry runs `lowbit-studio`, which must be on PATH: either the project's
# console script (pip install -e '.[gui]') or the PyInstaller build, e.g.
#   ln -s "$PWD/dist/lowbit-studio/lowbit-studio" ~/.local/bin/lowbit-studio
# Pass --link-build to create that ~/.local/bin link for a built dist/ here.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
APPS="$DATA_HOME/applications"
ICONS="$DATA_HOME/icons/hicolor/scalable/apps"
BIN="$HOME/.local/bin"

refresh() {
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$APPS" || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$DATA_HOME/icons/hicolor" || true
}

case "${1:-}" in
    --uninstall)
        rm -f "$APPS/lowbit-studio.desktop" "$ICONS/lowbit-studio.svg"
        [[ -L "$BIN/lowbit-studio" ]] && rm -f "$BIN/lowbit-studio"
        refresh
        echo "removed the Lowbit Studio desktop entry and icon"
        exit 0
        ;;
    --link-build)
        if [[ ! -x "$REPO/dist/lowbit-studio/lowbit-studio" ]]; then
            echo "no build at $REPO/dist/lowbit-studio; run: bash packaging/build.sh" >&2
            exit 1
        fi
        mkdir -p "$BIN"
        ln -sfn "$REPO/dist/lowbit-studio/lowbit-studio" "$BIN/lowbit-studio"
        echo "linked $BIN/lowbit-studio -> $REPO/dist/lowbit-studio/lowbit-studio"
        ;;
    "") ;;
    *) echo "usage: $0 [--link-build | --uninstall]" >&2; exit 2 ;;
esac

install -D -m 644 "$REPO/packaging/lowbit-studio.desktop" "$APPS/lowbit-studio.desktop"
install -D -m 644 "$REPO/resources/icons/lowbit.svg" "$ICONS/lowbit-studio.svg"
refresh
echo "installed $APPS/lowbit-studio.desktop"
echo "installed $ICONS/lowbit-studio.svg"
command -v lowbit-studio >/dev/null 2>&1 || \
    echo "note: 'lowbit-studio' is not on PATH yet; add the build with: $0 --link-build (and have ~/.local/bin on PATH)"
