#!/usr/bin/env bash
# The tests start their own redis-server processes on free ports (and build a
# cluster with redis-cli), so both binaries must exist, and Redis must be 7.0
# or newer: rooms use sharded pub/sub (SSUBSCRIBE/SPUBLISH), which 6.x lacks.
set -euo pipefail

NEED_MAJOR=7

how_to_install() {
  cat >&2 <<'MSG'
  Debian/Ubuntu:  sudo apt-get install redis-server   (Debian 12+, Ubuntu 24.04+ ship 7.x;
                  older releases: add the packages.redis.io apt repository, see
                  https://redis.io/docs/latest/operate/oss_and_stack/install/install-redis/)
  macOS:          brew install redis
MSG
}

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found: installing it with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed; the tests need Redis ${NEED_MAJOR}.0 or newer (they start their own instances)." >&2
    how_to_install
    exit 1
  fi
fi

# "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=..."
version="$(redis-server --version | sed -n 's/.* v=\([0-9][0-9]*\.[0-9][0-9]*[.0-9]*\).*/\1/p')"
major="${version%%.*}"
if [ -z "$version" ] || [ "$major" -lt "$NEED_MAJOR" ]; then
  echo "redis-server ${version:-of unknown version} ($(command -v redis-server)) is too old:" \
       "stockwire needs Redis ${NEED_MAJOR}.0 or newer for sharded pub/sub (SSUBSCRIBE/SPUBLISH)." >&2
  how_to_install
  exit 1
fi

if ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-cli is not installed; the Redis Cluster tests need it (redis-cli --cluster create)." >&2
  echo "  Debian/Ubuntu:  sudo apt-get install redis-tools    macOS: brew install redis" >&2
  exit 1
fi
