#!/usr/bin/env bash
# kiln's main job on the built-in example: set everything up, bake examples/hello from a
# Debian base, deploy it behind HAProxy, then show a zero-downtime redeploy under load.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
export PATH="$PWD/.venv/bin:$PATH"
SPEC=examples/hello/kiln.yaml

kiln base build -f "$SPEC"          # ~1 min the first time, then cached by the hash of its inputs
kiln deploy -f "$SPEC"
URL=$(kiln status -f "$SPEC" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
curl -fsS "$URL/"

# A new release under load: a copy of the example with a changed message, deployed while wrk
# hammers the router. Every request must succeed.
DEMO=$(mktemp -d)
LOAD=$(mktemp)
trap 'rm -rf "$DEMO" "$LOAD"' EXIT
cp -r examples/hello/. "$DEMO/"
sed -i "s/^MESSAGE = .*/MESSAGE = \"hello again, $(date +%s)\"/" "$DEMO/app.py"
wrk -t2 -c16 -d12s "$URL/" >"$LOAD" 2>&1 &
WRK=$!
sleep 1
kiln deploy -f "$DEMO/kiln.yaml"
wait "$WRK"
echo
echo "Load during the redeploy (wrk):"
sed -n '/requests in/p;/Non-2xx/p;/Socket errors/p;/Requests\/sec/p' "$LOAD"
if grep -qE 'Non-2xx|Socket errors' "$LOAD"; then echo "some requests failed" >&2; exit 1; fi
echo "0 failed requests."
echo
kiln releases -f "$SPEC"
curl -fsS "$URL/"
echo
echo "hello is serving at $URL   (kiln status -f $SPEC; kiln rollback -f $SPEC; kiln destroy -f $SPEC --env production)"
echo
echo "After a host or dockerd restart its instances stay exited unless \`kiln agent\` runs. Run it as a service:"
echo "  kiln agent install -f $PWD/$SPEC     (systemd; elsewhere it prints what to run instead; --print shows the unit)"
