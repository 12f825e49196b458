#!/usr/bin/env bash
# A one-site federation across the two images built by docker/build-images.sh: the coordinator
# image runs `coordinator start` (flower-superlink + the nginx fence), the site image runs
# `site init` (its own key) and `site start`, and `fedclinic run --federation` trains one round.
# Without a Docker daemon the containers are `buildah run` ones (chroot isolation), which share
# the host's network: everything listens on 127.0.0.1 only, on the ports below.
#
# Usage: bash docker/smoke-federation.sh      (root; after docker/build-images.sh)
# Environment: STORAGE_DRIVER [overlay], FEDCLINIC_SMOKE_PORT [29092]: the fence's port; the
#   SuperLink gets +1 and the site's runtime API +2.
set -euo pipefail

STORAGE_DRIVER="${STORAGE_DRIVER:-overlay}"
PORT="${FEDCLINIC_SMOKE_PORT:-29092}"
COORDINATOR_IMAGE=localhost/fedclinic-coordinator:latest
SITE_IMAGE=localhost/fedclinic-site:latest
work="$(mktemp -d -t fedclinic-smoke.XXXXXX)"
containers=()
runs=()

bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
in_ctr() { bh run --isolation chroot "$@"; }

cleanup() {
    local pid_file c pid
    # The supervisors stop their children on SIGTERM (the pids are host pids: chroot isolation).
    for pid_file in "$work/site/state/site.pid" "$work/coordinator/state/coordinator.pid"; do
        if [ -s "$pid_file" ]; then kill -TERM "$(cat "$pid_file")" 2>/dev/null || true; fi
    done
    for pid in "${runs[@]}"; do wait "$pid" 2>/dev/null || true; done
    for c in "${containers[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() {  # $1 log file, $2 text, $3 seconds
    local i
    for ((i = 0; i < $3; i++)); do
        if grep -q "$2" "$1"; then return 0; fi
        sleep 1
    done
    echo "smoke: no '$2' in $1 after $3 s:" >&2
    tail -n 30 "$1" >&2
    exit 1
}

mkdir -p "$work"/{coordinator,site/node,site/state,site/marks,sites}
chown -R 10001:10001 "$work"
coordinator="$(bh from --quiet "$COORDINATOR_IMAGE")"
site="$(bh from --quiet "$SITE_IMAGE")"
containers+=("$coordinator" "$site")
C=(-v "$work/coordinator:/coordinator")
S=(-v "$work/site/node:/site" -v "$work/sites/site-a:/data:ro" -v "$work/site/state:/state"
   -v "$work/site/marks:/ledger-marks")

echo "== coordinator init, site init (the site's key pair is made in the site container)"
in_ctr -v "$work/sites:/sites" "$site" -- fedclinic synth --sites 1 --patients 60 --out /sites >/dev/null
# Exact validation metrics: a DP release over 12 held-out patients defines no AUROC in most tries,
# and a run with no defined AUROC ends `failed`; this smoke test is about the images' wiring.
sed -i 's/^  seed: 0$/  seed: 0\n  release: exact/' "$work/sites/site-a/site.yaml"
grep -q '^  release: exact$' "$work/sites/site-a/site.yaml"
in_ctr "${C[@]}" "$coordinator" -- fedclinic coordinator init /coordinator --host localhost \
    --listen "127.0.0.1:$PORT" --superlink-port "$((PORT + 1))" >/dev/null
in_ctr "${S[@]}" -v "$work/coordinator/certs/ca.crt:/run/fedclinic/ca.crt:ro" "$site" -- \
    fedclinic site init /site --name site-a --coordinator "127.0.0.1:$PORT" \
    --ca /run/fedclinic/ca.crt --data /data --state /state --runtime-port "$((PORT + 2))" >/dev/null

echo "== coordinator start"
in_ctr "${C[@]}" "$coordinator" -- fedclinic coordinator start /coordinator > "$work/coordinator.log" 2>&1 &
runs+=($!)
wait_for "$work/coordinator.log" "fedclinic coordinator up" 120
grep -E "coordinator up|sites connect to" "$work/coordinator.log"
in_ctr "${C[@]}" -v "$work/site/node/keys:/site-keys:ro" "$coordinator" -- \
    fedclinic coordinator register-site site-a /site-keys/site-a.pub --dir /coordinator

echo "== site start"
in_ctr "${S[@]}" "$site" -- fedclinic site start /site/node.toml > "$work/site.log" 2>&1 &
runs+=($!)
wait_for "$work/site.log" "gated task runner ready" 120
grep -E "online at the coordinator|runner ready" "$work/site.log"

echo "== run --federation: one round"
in_ctr "${C[@]}" "$coordinator" -- fedclinic run --federation /coordinator \
    rounds=1 train.local_epochs=1 train.batch_size=32 > "$work/run.log" 2>&1 \
    || { tail -n 40 "$work/run.log" >&2; exit 1; }
grep -E "^completed: .*final AUROC" "$work/run.log"
summary=("$work"/coordinator/runs/*/summary.json)
python3 -c 'import json, sys
trained = json.load(open(sys.argv[1]))["rounds"][0]["sites_trained"]
print("sites that trained in round 1:", trained)
sys.exit(trained != 1)' "${summary[0]}"
echo "smoke: the federation of the two images trained a round"
