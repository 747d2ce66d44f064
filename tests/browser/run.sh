#!/usr/bin/env bash
# The dashboard's browser tests: headless Chromium (Debian's /usr/bin/chromium, driven by
# playwright-core; no browser download) against one running feedsync-demo, shared by every test
# in dashboard.test.mjs. Screenshots of the pages checked go to TARGET/browser-screenshots/.
#
# Installs what is missing: Debian's chromium and sqlite3 (as root, with apt-get), the npm
# package playwright-core (npm ci here). Needs Node.js 20 or later and the Rust toolchain (it
# builds the demo and the two CLIs in the dev profile, the same artifacts scripts/test builds).
# Without Chromium it says it skipped, except under CI=true, where it fails.
#
# Environment: CHROMIUM (default /usr/bin/chromium); KEEP_DEMO=1 keeps the demo's folder and
# log after a pass (they are always kept after a failure).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/browser"
cd "$ROOT"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
# Playwright must never fetch a browser of its own: this machine's is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

cannot_run() {
  if [ "${CI:-}" = true ]; then
    echo "error: the browser tests cannot run: $1" >&2
    exit 1
  fi
  echo "skipped: the browser tests: $1"
  exit 0
}

apt_updated=0
install_debian() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install $* here (needs root and apt-get)" >&2
    return 1
  fi
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq || return 1
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$CHROMIUM" ]; then
  echo "installing Debian's chromium (for $CHROMIUM)"
  install_debian chromium || true
fi
[ -x "$CHROMIUM" ] || cannot_run "no Chromium at $CHROMIUM (apt-get install chromium, as root)"
"$CHROMIUM" --version 2>/dev/null | grep -q Chromium || cannot_run "$CHROMIUM does not run"
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo "installing Debian's sqlite3 (the tests read the demo's databases with it)"
  install_debian sqlite3 || true
fi
command -v sqlite3 >/dev/null 2>&1 || cannot_run "no sqlite3 (apt-get install sqlite3, as root)"
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if ! command -v npm >/dev/null 2>&1 || [ "$(node_major)" -lt 20 ]; then
  echo "installing Debian's nodejs and npm"
  install_debian nodejs npm || true
fi
command -v npm >/dev/null 2>&1 || cannot_run "no Node.js with npm (playwright-core needs Node.js 20 or later)"
[ "$(node_major)" -ge 20 ] || cannot_run "Node.js $(node --version) is too old: playwright-core needs 20 or later"

(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)

cargo build --locked --bin feedsync-demo --bin feed-subscriber --bin feed-publisher
TARGET="$(cargo metadata --format-version 1 --no-deps --locked | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')"
export FEEDSYNC_BIN_DIR="$TARGET/debug"
export SCREENSHOT_DIR="$TARGET/browser-screenshots"
mkdir -p "$SCREENSHOT_DIR"
rm -f "$SCREENSHOT_DIR"/*.png

# The demo: 3 facilities, busy enough that numbers move every second (4 clinic actions per
# second, a round per facility per second), its scenes (a patient moving, the conflict the
# tests resolve, a facility offline and back) played within the first 30 s. --duration bounds
# it should this script be killed before it stops the demo.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/feedsync-browser.XXXXXX")"
export DEMO_DIR="$WORK/demo"
LOG="$WORK/demo.log"
env -u FEEDSYNC_ADMIN_TOKEN "$FEEDSYNC_BIN_DIR/feedsync-demo" --seed 3 --children 3 --speed 4 --round-interval-ms 1000 \
  --listen 127.0.0.1:0 --dir "$DEMO_DIR" --duration 1800 >"$LOG" 2>&1 &
DEMO_PID=$!
started=$SECONDS

stop_demo() {
  local status=$?
  if kill -0 "$DEMO_PID" 2>/dev/null; then
    kill -INT "$DEMO_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$DEMO_PID" 2>/dev/null || true
  fi
  wait "$DEMO_PID" 2>/dev/null || true
  if [ "$status" != 0 ]; then
    echo "the demo's last lines (whole log and databases kept in $WORK):"
    tail -n 40 "$LOG" || true
  elif [ "${KEEP_DEMO:-}" = 1 ]; then
    echo "the demo's log and databases: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap stop_demo EXIT
trap 'exit 130' INT TERM

echo "starting the demo (log: $LOG)"
for _ in $(seq 1 600); do
  grep -q '^the clinics open' "$LOG" 2>/dev/null && break
  kill -0 "$DEMO_PID" 2>/dev/null || { echo "the demo stopped before its clinics opened"; exit 1; }
  sleep 1
done
grep -q '^the clinics open' "$LOG" || { echo "the demo did not open its clinics within 10 minutes"; exit 1; }
DEMO_URL="$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$LOG" | head -n 1)"
[ -n "$DEMO_URL" ] || { echo "the demo did not say where it listens"; exit 1; }
DEMO_CHILDREN="$(grep -v '^#' "$DEMO_DIR/tokens.txt" | cut -d' ' -f1 | paste -sd, -)"
export DEMO_URL DEMO_CHILDREN REPO_ROOT="$ROOT"
echo "the demo is up at $DEMO_URL after $((SECONDS - started)) s (children: $DEMO_CHILDREN)"

(cd "$HERE" && node --test dashboard.test.mjs)
echo "browser tests done in $((SECONDS - started)) s; screenshots: $(ls "$SCREENSHOT_DIR" | paste -sd' ' -) in $SCREENSHOT_DIR"
