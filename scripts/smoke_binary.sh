#!/usr/bin/env bash
# Build dist/pushy with PyInstaller and smoke-test the artifact itself, from a directory outside
# the source tree, with an empty environment (no Python packages reachable): serve on a temp data
# dir and port 0, client create, agent with a whitelist, job start (exit 0), job output, the
# dashboard's files and a login link (pushy ui), SIGTERM; then pushy sandbox and the job line it
# prints, Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[build]' 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -m PyInstaller --noconfirm --clean --log-level WARN pyinstaller.spec

work=$(mktemp -d /tmp/pushy-smoke.XXXXXX)
server_pid=""
agent_pid=""
sandbox_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$sandbox_pid" ] && kill -9 "$sandbox_pid" 2>/dev/null || true
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
# "available" as a word: "unavailable" (offline, or not yet connected) must not end the wait.
# The output is read whole first: under pipefail, grep -q exiting at its match could fail the
# pipeline with the writer's broken pipe.
available=""
deadline=$((SECONDS + 60))
while [ "$SECONDS" -lt "$deadline" ]; do
  state=$(run node status smoke1 2>/dev/null || true)
  grep -qw available <<<"$state" && { available=1; break; }
  sleep 0.1
done
[ -n "$available" ] || { printf '%s\n' "$state"; cat "$work/agent.log" "$work/server.log"; echo "smoke: the agent did not come online within 60 s"; exit 1; }

out=$(run job start 'echo smoke' smoke1 --capture --json) || { printf '%s\n' "$out"; cat "$work/agent.log"; echo "smoke: job start failed"; exit 1; }
job_id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
test "$(run job output "$job_id" smoke1)" = "smoke" || { echo "smoke: wrong job output"; exit 1; }

# the dashboard is inside the binary: its page, its modules, and a login link that signs in
link=$(run ui --no-browser 2>/dev/null)
python3 - "$url" "$work/data/tls/ca.pem" "$link" <<'PY' || { echo "smoke: dashboard not served"; exit 1; }
import ssl
import sys
import urllib.error
import urllib.request

url, ca, link = sys.argv[1:4]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


tls = ssl.create_default_context(cafile=ca)
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), NoRedirect)
page = opener.open(url + "/ui/").read().decode()
assert 'src="/ui/static/app.js"' in page, page
for name in ("app.js", "app.css", "api.js", "pages/job.js", "pages/start.js"):
    assert opener.open(f"{url}/ui/static/{name}").status == 200, name
try:
    opener.open(link)
    raise SystemExit("the login link did not redirect")
except urllib.error.HTTPError as e:
    assert e.code == 303 and e.headers["Set-Cookie"].startswith("pushy_session="), e
PY

kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
kill -TERM "$server_pid"
status=0; wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || { cat "$work/server.log"; echo "smoke: server exited $status on SIGTERM"; exit 1; }
[ ! -f "$work/data/run/server.json" ] || { echo "smoke: run/server.json left behind"; exit 1; }
# pushy sandbox: the server and two agents from the one file, and the job line it prints runs
# as printed (HOME is new: nothing else is configured, the CLI finds the sandbox by itself)
senv=(env -i PATH="$work:/usr/bin:/bin" HOME="$work/home")
mkdir -p "$work/home"
"${senv[@]}" "$work/pushy" sandbox --listen 127.0.0.1:0 --nodes 2 >"$work/sandbox.out" 2>"$work/sandbox.err" &
sandbox_pid=$!
for _ in $(seq 1 300); do grep -q "Ctrl-C stops the sandbox" "$work/sandbox.out" && break; sleep 0.1; done
grep -q "Ctrl-C stops the sandbox" "$work/sandbox.out" || { cat "$work/sandbox.out" "$work/sandbox.err"; echo "smoke: sandbox did not start"; exit 1; }
line=$(grep "pushy job start" "$work/sandbox.out" | sed 's/^ *//')
"${senv[@]}" sh -c "$line" >"$work/sandbox-job.out" || { cat "$work/sandbox-job.out"; echo "smoke: the sandbox's job line failed: $line"; exit 1; }
kill -INT "$sandbox_pid"
status=0; wait "$sandbox_pid" || status=$?
sandbox_pid=""
[ "$status" -eq 0 ] || { cat "$work/sandbox.err"; echo "smoke: sandbox exited $status on Ctrl-C"; exit 1; }

echo "smoke: dist/pushy passed (serve, client create, agent, job start, job output, dashboard, SIGTERM, sandbox)"
