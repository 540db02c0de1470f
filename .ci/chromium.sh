#!/usr/bin/env bash
# Headless Chromium for evalkit's `browser` tests (issue 20), installed the way test-slurm installs SLURM.
#
#   .ci/chromium.sh install        apt-get install Debian's chromium when no chromium is on PATH (root)
#   .ci/chromium.sh run CMD...     install, then run CMD with EVALKIT_CHROMIUM naming the binary;
#                                  exits with CMD's status
#
# The tests start the browser themselves (tests/_browser.py: DevTools protocol over a pipe, headless,
# network emulated offline, host names unresolvable), so nothing is left running.
set -euo pipefail

die() { echo "chromium: $*" >&2; exit 1; }

find_browser() {
    local c
    for c in chromium chromium-browser google-chrome; do
        command -v "$c" >/dev/null && { command -v "$c"; return 0; }
    done
    return 1
}

install() {
    find_browser >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install chromium (apt-get install chromium)"
    echo "chromium: installing chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    # a fresh machine may have no package lists yet: update only when the install fails for want of them
    apt-get install -y -q --no-install-recommends chromium >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
    find_browser >/dev/null || die "apt-get installed chromium, but no chromium is on PATH"
}

case "${1:-}" in
    install) install ;;
    run)
        shift
        [ $# -gt 0 ] || die "usage: $0 run CMD..."
        install
        EVALKIT_CHROMIUM=$(find_browser)
        export EVALKIT_CHROMIUM
        "$@"
        ;;
    *) die "usage: $0 install | run CMD..." ;;
esac
