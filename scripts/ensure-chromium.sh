#!/usr/bin/env bash
# The browser tests (tests/web) drive Debian's Chromium through Playwright; make sure it exists.
# Playwright's own browser download is never used: it cannot be fetched here.
set -euo pipefail
CHROMIUM="${STOCKWIRE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found: installing it with apt-get (with CJK fonts for the Chinese screens)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
chromium is not installed; the browser tests in tests/web need it (at /usr/bin/chromium,
or wherever STOCKWIRE_CHROMIUM points).
  Debian/Ubuntu:  sudo apt-get install chromium fonts-noto-cjk
MSG
exit 1
