#!/usr/bin/env bash
# A real browser's EventSource against the prep shelf's event stream: headless Chromium (Debian's
# `chromium` package) opens page.html, which follows /v1/jobs/{id}/events (the id of the job this
# script submits, passed in the page's query) and prints every event
# it got, then the state the EventSource ended in. Expect every event of the job with its id, then
# `readyState=2`: after the last event the browser reconnected with Last-Event-ID, got 204, and
# stopped. The page is a file, so Chromium runs with web security off (the kitchen sends no CORS
# headers); this checks the stream's format and reconnection, not cross-origin access.
#
# usage: tools/browser-eventsource/run.sh   (with a kitchen on 127.0.0.1:8080)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
job="$(curl -sf http://127.0.0.1:8080/v1/jobs -H 'content-type: application/json' \
  -d '{"document":"The kitchen embeds this document in small chunks, one after another.","chunk_size":16}' \
  | sed -n 's/.*"id":"\(job-[0-9a-f]*\)".*/\1/p')"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --disable-web-security --virtual-time-budget=8000 \
  --dump-dom "file://$here/page.html?job=$job" 2>/dev/null | grep -o '<body>.*</body>'
