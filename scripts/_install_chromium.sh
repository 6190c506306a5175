#!/usr/bin/env bash
# Install Debian's chromium for the UI test (tests/test_mlflow_ui.py), if it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Never fails the caller: if apt is
# unreachable (offline machine, no root), it says why and the UI test is skipped.
set -u
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "_install_chromium: apt-get not found; the chromium UI test will be skipped." >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "_install_chromium: not root and no passwordless sudo; the chromium UI test will be skipped." >&2
        exit 0
    fi
fi
log="$(mktemp -t install_chromium.XXXXXX)"
if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update >"$log" 2>&1 \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >>"$log" 2>&1; then
    echo "_install_chromium: installed $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
else
    echo "_install_chromium: apt-get could not install chromium (last lines below); the chromium UI test will be skipped." >&2
    tail -n 5 "$log" >&2
fi
rm -f "$log"
exit 0
