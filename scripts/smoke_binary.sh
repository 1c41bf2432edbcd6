#!/usr/bin/env bash
# Build dist/pushy with PyInstaller and smoke-test the artifact itself, from a directory outside
# the source tree, with an empty environment (no Python packages reachable): serve on a temp data
# dir and port 0, client create, agent with a whitelist, job start (exit 0), job output, SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[build]' 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -m PyInstaller --noconfirm --clean --log-level WARN pyinstaller.spec

work=$(mktemp -d /tmp/pushy-smoke.XXXXXX)
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp dist/pushy "$work/pushy"
cd "$work"
# `env` execs the binary, so a background `env … &` has the binary's pid in $!.
envp=(env -i PATH=/usr/bin:/bin HOME="$work" PUSHY_DATA_DIR="$work/data")
run() { "${envp[@]}" "$work/pushy" "$@"; }

run version
"${envp[@]}" "$work/pushy" serve --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do [ -f "$work/data/run/server.json" ] && break; sleep 0.1; done
[ -f "$work/data/run/server.json" ] || { cat "$work/server.log"; echo "smoke: server did not start"; exit 1; }
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$work/data/run/server.json")

run client create smoke1 --key-out "$work/smoke1.pem"
cat >"$work/agent.toml" <<TOML
server_url = "$url/organizations/default"
node_name = "smoke1"
client_key = "$work/smoke1.pem"
ca_cert = "$work/data/tls/ca.pem"
state_dir = "$work/agent-state"
[[allow]]
pattern = '^echo [a-z]+\$'
TOML
"${envp[@]}" "$work/pushy" agent --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do
  run node status smoke1 2>/dev/null | grep -q available && break
  sleep 0.1
done

out=$(run job start 'echo smoke' smoke1 --capture --json)
job_id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
test "$(run job output "$job_id" smoke1)" = "smoke" || { echo "smoke: wrong job output"; exit 1; }

kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
kill -TERM "$server_pid"
status=0; wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || { cat "$work/server.log"; echo "smoke: server exited $status on SIGTERM"; exit 1; }
[ ! -f "$work/data/run/server.json" ] || { echo "smoke: run/server.json left behind"; exit 1; }
echo "smoke: dist/pushy passed (serve, client create, agent, job start, job output, SIGTERM)"
