#!/usr/bin/env bash
# Debian's PostgreSQL server, for the team stack (`locdiff stack up`) and its test. Needs root or sudo;
# does nothing when a server is installed. The stack runs its own cluster on its own port: the package's
# default cluster is left as Debian starts it.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq postgresql >/dev/null || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null; }
ls /usr/lib/postgresql/*/bin/initdb
