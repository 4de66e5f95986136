#!/usr/bin/env bash
# Debian's chromium, for the browser test and the README pictures: playwright (in the lock) drives this
# system binary and never downloads a browser of its own. Needs root or sudo; does nothing when present.
set -euo pipefail
if [ -x "${LOCDIFF_CHROMIUM:-/usr/bin/chromium}" ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
/usr/bin/chromium --version
