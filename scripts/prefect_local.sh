#!/usr/bin/env bash
# Run a cscf deployment the way users do: a local Prefect server, a process worker, the
# deployments of prefect.yaml, then `prefect deployment run ... --watch`.
# Exits 0 only if the flow run ended Completed. Stops everything it started, always;
# interrupted (Ctrl-C, SIGTERM), it cancels the flow run first.
#
# usage: scripts/prefect_local.sh [arguments for `prefect deployment run`]
#   scripts/prefect_local.sh --params '{"params": {"epochs": 5, "out": "out"}}'
#   CSCF_DEPLOYMENT=cscf-stage-split/split scripts/prefect_local.sh
# env: CSCF_DEPLOYMENT  flow/deployment to run (default cscf/full-pipeline)
#      CSCF_THEN        a second flow/deployment run after the first Completed, on the same
#                       server and worker, with the parameters CSCF_THEN_PARAMS (JSON)
#      CSCF_TIMEOUT     seconds the flow run may take (default 3600)
#      VENV_BIN         where `python` and `prefect` are (default .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."  # prefect.yaml's `{{ $PWD }}` pull step: the worker runs flows from here

DEPLOYMENT=${CSCF_DEPLOYMENT:-cscf/full-pipeline}
POOL=cscf-local  # the work pool named in prefect.yaml
VENV_BIN=$(cd "${VENV_BIN:-.venv/bin}" && pwd)
export PATH="$VENV_BIN:$PATH"  # the worker starts flow runs with this python

STATE=$(mktemp -d "${TMPDIR:-/tmp}/cscf-prefect.XXXXXX")
export PREFECT_HOME=$STATE/home PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_WORKER_QUERY_SECONDS=2 PREFECT_LOGGING_EXTRA_LOGGERS=cscf HF_HUB_OFFLINE=1
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
PIDS=()  # process groups to stop: server, worker, watcher

log() { echo "prefect_local [${SECONDS}s]: $*" >&2; }

# start NAME CMD...: CMD in its own process group (stopped with its children at exit), output in NAME.log
start() {
    local name=$1; shift
    setsid "$@" >"$STATE/$name.log" 2>&1 &
    PIDS+=("$!")
    disown "$!"
}

# flow_run_state ID: "TYPE NAME" of a flow run's state, e.g. "COMPLETED Cached"
flow_run_state() {
    python - "$PREFECT_API_URL/flow_runs/$1" <<'PY'
import json, sys, urllib.request
state = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))["state"]
print(state["type"], state["name"])
PY
}

any_alive() {
    local pid
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
    return 1
}

run_id() { grep -oE 'UUID: [0-9a-f-]{36}' "$STATE/run.log" 2>/dev/null | head -n1 | cut -d' ' -f2; }

cleanup() {
    local rc=$? id type _ pid
    trap '' INT TERM  # finish cleaning up even if interrupted again
    id=$(run_id || true)
    if [ -n "$id" ] && read -r type _ < <(flow_run_state "$id" 2>/dev/null) \
        && [[ ! $type =~ ^(COMPLETED|FAILED|CANCELLED|CRASHED)$ ]]; then
        log "cancelling flow run $id ($type)"
        prefect flow-run cancel "$id" >/dev/null 2>&1 || true
        for _ in $(seq 30); do
            read -r type _ < <(flow_run_state "$id" 2>/dev/null) || break
            [[ $type =~ ^(CANCELLED|COMPLETED|FAILED|CRASHED)$ ]] && break
            sleep 1
        done
    fi
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    # the server stops at once; a worker lingers long after SIGTERM even when idle, so it gets SIGKILL
    for _ in $(seq 25); do any_alive || break; sleep 0.2; done
    for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    if [ "$rc" -ne 0 ]; then
        for f in server worker; do
            [ -s "$STATE/$f.log" ] && { log "last lines of the $f log:"; tail -n 40 "$STATE/$f.log" >&2; }
        done
    fi
    rm -rf "$STATE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start server prefect server start --host 127.0.0.1 --port "$PORT"
log "server starting on http://127.0.0.1:$PORT (PREFECT_HOME=$PREFECT_HOME)"
python - "$PREFECT_API_URL/health" "${PIDS[0]}" <<'PY'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"prefect_local: the server exited before {url} answered")
    time.sleep(0.5)
sys.exit(f"prefect_local: {url} did not answer within 180 s")
PY
log "server healthy"

prefect work-pool create "$POOL" --type process >/dev/null
start worker prefect worker start --pool "$POOL"
prefect --no-prompt deploy --all >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log" >&2; exit 1; }
log "deployed prefect.yaml; worker polling pool $POOL; running $DEPLOYMENT"

# run_deployment NAME ARGS...: run it and watch it to the end; succeeds only if it ended Completed.
# In the background so that a signal reaches the trap at once, not when the watch ends.
run_deployment() {
    local name=$1 id type state; shift
    setsid prefect deployment run "$name" --watch --watch-timeout "${CSCF_TIMEOUT:-3600}" "$@" \
        > >(tee "$STATE/run.log") 2>&1 &
    PIDS+=("$!")
    wait "$!" || true
    id=$(run_id)
    [ -n "$id" ] || { log "no flow run was created"; return 1; }
    read -r type state < <(flow_run_state "$id")
    log "flow run $id ($name) ended $state"
    [ "$type" = COMPLETED ]
}

run_deployment "$DEPLOYMENT" "$@"
if [ -n "${CSCF_THEN:-}" ]; then
    log "running $CSCF_THEN"
    run_deployment "$CSCF_THEN" --params "${CSCF_THEN_PARAMS:-"{}"}"
fi
