#!/usr/bin/env bash
# OpenAI's official Python and Node clients through the kitchen to an upstream, tool calls
# included: builds the kitchen and bare_stream, starts bare_stream (the upstream: paced
# chunks, a tool call when offered tools) and the kitchen in front of it (`--upstream`, with
# `--model-alias line-cook=bare`), installs the clients on first use under
# target/openai-clients (a Python venv with `pip install openai`, an npm prefix with
# `npm install openai`), runs check.py and check.mjs with `--tools`, and stops the servers.
#
# usage: tools/openai-clients/run.sh   (ports from BARE_PORT and KITCHEN_PORT, 18191 and 18190)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$root/tools/openai-clients
work=$root/target/openai-clients
bare_port=${BARE_PORT:-18191}
kitchen_port=${KITCHEN_PORT:-18190}
mkdir -p "$work"

cargo build --quiet --manifest-path "$root/Cargo.toml" --example kitchen --example bare_stream
bin=$root/target/debug/examples
"$bin/bare_stream" --addr "127.0.0.1:$bare_port" --ttft-ms 20 --token-ms 5 --tokens 8 \
  > "$work/bare_stream.log" 2>&1 &
pids=($!)
"$bin/kitchen" --addr "127.0.0.1:$kitchen_port" --upstream "http://127.0.0.1:$bare_port" \
  --model-alias line-cook=bare > "$work/kitchen.log" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$kitchen_port/healthz" > /dev/null && break
  sleep 0.1
done

if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet openai
fi
if [ ! -d "$work/node/node_modules/openai" ]; then
  npm install --silent --prefix "$work/node" openai
fi
# Node resolves `import "openai"` from the script's own directory.
cp "$here/check.mjs" "$work/node/check.mjs"

echo "== Python, openai $("$work/venv/bin/python" -c 'import openai; print(openai.__version__)')"
"$work/venv/bin/python" "$here/check.py" "$kitchen_port" line-cook --tools
echo "== Node, openai $(node -p "require('$work/node/node_modules/openai/package.json').version")"
node "$work/node/check.mjs" "$kitchen_port" line-cook --tools
echo "== the kitchen's log"
cat "$work/kitchen.log"
