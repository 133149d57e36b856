#!/usr/bin/env bash
# The tests start their own redis-server on free ports; make sure the binary exists.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found: installing it with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
redis-server is not installed; the tests need it (they start their own instances).
  Debian/Ubuntu:  sudo apt-get install redis-server
  macOS:          brew install redis
MSG
exit 1
