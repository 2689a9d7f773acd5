#!/usr/bin/env bash
# Three hospital silos on one machine, as a real Flower deployment:
#   anvil (the chain), a store directory every silo reaches (or an IPFS node: STORE=ipfs:/ip4/...),
#   a SuperLink with TLS and SuperNode authentication, 3 SuperNodes each with its own chain
#   keystore, SuperNode key pair, data files and node config, each pinned to the release
#   (the FAB this checkout builds, snapshotted: its code gate runs no other FAB); the
#   consortium set-up (deai consortium ...), flwr run, a wait for the run's end, deai verify.
# It prints a line per round phase as the chain records it. Everything started here is
# stopped on exit, failure or Ctrl-C. Exit 0 only if every round finalized and the run
# verifies from chain + store. About 3 minutes on a quiet 2-core machine (9 min under a load of 7-12).
#
#   bash examples/hospital-silos/run_demo.sh [WORK_DIR]
#
# WORK_DIR (default: a fresh temporary directory) keeps every key, log and result. Each
# long-running part is started with `deai local start --dir WORK_DIR` (recorded in
# WORK_DIR/run, logged to WORK_DIR/logs): should the script be killed without its clean-up,
# `deai local stop --dir WORK_DIR` stops exactly what it started.
# Settings (environment): ROUNDS (default 2), DEMO_OVERRIDES (extra Hydra overrides of the
# run), RUN_TIMEOUT_S (default 900), STORE (default local:WORK_DIR/store; "ipfs" starts an
# offline IPFS node here; ipfs:/ip4/HOST/tcp/PORT uses yours), KEEP=1 (leave chain, store,
# SuperLink and SuperNodes running at the end; stop them with `deai local stop --dir WORK_DIR`).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -x "$REPO/.venv/bin/flwr" ]]; then export PATH="$REPO/.venv/bin:$PATH"; fi
for tool in python flwr flower-superlink flower-supernode deai curl; do
  command -v "$tool" >/dev/null || { echo "run_demo: '$tool' is not on PATH (install the project: pip install -e .)" >&2; exit 2; }
done
WORK=${1:-$(mktemp -d -t hospital-silos-XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
ROUNDS=${ROUNDS:-2}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-900}
SILOS=(silo-0 silo-1 silo-2)
STARTED=$(date +%s)
WATCH=""

log() { printf '[%4ss] %s\n' "$(( $(date +%s) - STARTED ))" "$*"; }

stop_all() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$WATCH" ]]; then kill "$WATCH" 2>/dev/null || true; fi
  if [[ $status -eq 0 && "${KEEP:-0}" == 1 ]]; then
    log "KEEP=1: chain, store, SuperLink and SuperNodes still run; stop them with: deai local stop --dir $WORK"
    exit 0
  fi
  deai local stop --dir "$WORK" >>"$WORK/logs/stop.log" 2>&1 || true
  if [[ $status -ne 0 ]]; then
    log "FAILED (status $status); logs in $WORK/logs"
    for f in "$WORK"/logs/*.log; do [[ -f "$f" ]] && { echo "--- tail of $f"; tail -n 15 "$f"; }; done
  fi
  log "stopped everything this script started"
  exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in its own session (so its children stop with it), log to
# logs/NAME.log, recorded in run/NAME.json (deai local stop stops exactly these)
start() {
  local name=$1; shift
  deai local start --dir "$WORK" "$name" -- "$@" >/dev/null
}

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() {  # wait_for WHAT SECONDS CMD...
  local what=$1 limit=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "run_demo: $what did not come up within ${limit}s" >&2; return 1
}

mkdir -p "$WORK/logs"
log "work directory $WORK"

# --- the chain -----------------------------------------------------------------------------
ANVIL=$(python -c 'from deai_flower.chain.devnode import find_anvil, install_anvil; print(find_anvil() or install_anvil())')
ANVIL_PORT=$(free_port)
RPC="http://127.0.0.1:$ANVIL_PORT"
start anvil "$ANVIL" --host 127.0.0.1 --port "$ANVIL_PORT" --silent
wait_for anvil 30 curl -sf -X POST -H 'content-type: application/json' \
  --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$RPC"
log "anvil at $RPC"

# --- the store every silo reaches ------------------------------------------------------------
# STORE=ipfs: an offline IPFS node started here (Kubo if on PATH, else js-ipfs from npm);
# STORE=ipfs:/ip4/HOST/tcp/PORT: an IPFS node you run; default: one directory on this machine.
STORE=${STORE:-local:$WORK/store}
if [[ "$STORE" == ipfs ]]; then
  start ipfs python -m deai_flower.consortium.localnet ipfs "$WORK/ipfs-api"
  wait_for "the IPFS node" 300 test -s "$WORK/ipfs-api"
  STORE="ipfs:$(cat "$WORK/ipfs-api")"
fi
log "store $STORE"

# --- consortium set-up: keys, certificates, contract, registry, run --------------------------
K="$WORK/consortium"
deai consortium keystore --out "$K/keys" --name coordinator --kdf pbkdf2 | tee "$WORK/logs/setup.log"
deai consortium tls --out "$K/tls" | tee -a "$WORK/logs/setup.log"
for silo in "${SILOS[@]}"; do
  # each silo creates its own chain key and SuperNode key pair and keeps them; it hands
  # over its address and its SuperNode public key
  deai consortium keystore --out "$WORK/$silo/keys" --name chain --kdf pbkdf2 | tee -a "$WORK/logs/setup.log"
  deai consortium supernode-key --out "$WORK/$silo/keys" --name supernode | tee -a "$WORK/logs/setup.log"
done
address_of() { python -c 'import json,sys; print("0x" + json.load(open(sys.argv[1]))["address"])' "$1"; }
COORDINATOR=$(address_of "$K/keys/coordinator.keystore.json")
SILO_ADDRESSES=()
for silo in "${SILOS[@]}"; do SILO_ADDRESSES+=("$(address_of "$WORK/$silo/keys/chain.keystore.json")"); done
deai consortium fund --rpc "$RPC" "$COORDINATOR" "${SILO_ADDRESSES[@]}"
ADMIN=(--keystore "$K/keys/coordinator.keystore.json" --password-file "$K/keys/coordinator.password")
CONTRACT=$(deai consortium deploy --rpc "$RPC" "${ADMIN[@]}" | tee -a "$WORK/logs/setup.log" | grep -o '0x[0-9a-fA-F]\{40\}' | head -1)
log "contract $CONTRACT"
for i in "${!SILOS[@]}"; do
  deai consortium register --rpc "$RPC" --contract "$CONTRACT" "${ADMIN[@]}" --silo "${SILO_ADDRESSES[$i]}" \
    --supernode-key "$WORK/${SILOS[$i]}/keys/supernode.pub"
done
# demonstration data: each silo's own training and held-out files
deai consortium demo-data --out "$WORK/data" --silos "${#SILOS[@]}" dataset=breast_cancer
# Paid by the shares score (the default, named here for the reader): under DP an honest
# silo's alignment with two others is often below chance, so the alignment score paid
# nobody in some runs (docs/incentives.md)
# shellcheck disable=SC2086
deai consortium create-run --rpc "$RPC" --contract "$CONTRACT" "${ADMIN[@]}" --store "$STORE" \
  --output-dir "$WORK/results" num_rounds="$ROUNDS" dataset=breast_cancer training.local_epochs=1 training.batch_size=16 \
  incentives.score=shares ${DEMO_OVERRIDES:-} | tee "$WORK/logs/create-run.log"
RUN_ID=$(sed -n 's/^created run \([0-9]*\) .*/\1/p' "$WORK/logs/create-run.log")
RUN_CONFIG=$(sed -n "s/.*--run-config '\(.*\)'\$/\1/p" "$WORK/logs/create-run.log")

# --- the SuperLink: TLS and SuperNode authentication ------------------------------------------
LINK_PORT=$(free_port)
start superlink flower-superlink --ssl-ca-certfile "$K/tls/ca.crt" --ssl-certfile "$K/tls/server.pem" \
  --ssl-keyfile "$K/tls/server.key" --enable-supernode-auth --host 127.0.0.1 --port "$LINK_PORT" \
  --database "$WORK/superlink.db" --disable-runtime-dependency-installation
wait_for SuperLink 60 curl -sf --cacert "$K/tls/ca.crt" "https://127.0.0.1:$LINK_PORT/health"
log "SuperLink at 127.0.0.1:$LINK_PORT (TLS, SuperNode authentication)"
export FLWR_HOME="$WORK/flwr-home"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "consortium"

[superlink.consortium]
address = "127.0.0.1:$LINK_PORT"
root-certificates = "$K/tls/ca.crt"
TOML
for silo in "${SILOS[@]}"; do
  flwr supernode register "$WORK/$silo/keys/supernode.pub" consortium >>"$WORK/logs/setup.log"
done
log "registered ${#SILOS[@]} SuperNode public keys with the SuperLink"

# --- the release every silo approves: the FAB this checkout builds ----------------------------
# Snapshotted into WORK/release/app (it builds the very same FAB), so that an edit of the
# checkout while the demo runs does not make the silos refuse the run.
RELEASE="$WORK/release/app"
python -c 'import sys; from pathlib import Path; from deai_flower.consortium.release import build_fab, unpack_fab
unpack_fab(build_fab(Path(sys.argv[1])), Path(sys.argv[2]))' "$REPO" "$RELEASE"
RELEASE_SHA=$(deai release hash "$RELEASE" | cut -d' ' -f1)
log "approved release: FAB SHA-256 $RELEASE_SHA"

# --- the silos: one SuperNode each, and its code gate -----------------------------------------
for i in "${!SILOS[@]}"; do
  silo=${SILOS[$i]} home="$WORK/${SILOS[$i]}" port=$(free_port)
  node_config="keystore=\"$home/keys/chain.keystore.json\" password-file=\"$home/keys/chain.password\""
  node_config+=" data-path=\"$WORK/data/$silo/train.npz\" eval-data-path=\"$WORK/data/$silo/eval.npz\""
  node_config+=" chain-url=\"$RPC\" store=\"$STORE\" ledger-dir=\"$home/ledger\" device=\"cpu\" threads=1"
  # its terms: the contract and the run it agreed to (limits: the defaults, docs/deployment.md)
  node_config+=" contract=\"$CONTRACT\" runs=\"$RUN_ID\""
  deai silo check --node-config "$node_config" >>"$WORK/logs/setup.log"
  start "$silo" flower-supernode --root-certificates "$K/tls/ca.crt" --superlink "127.0.0.1:$LINK_PORT" \
    --auth-supernode-private-key "$home/keys/supernode" --port "$port" --isolation process \
    --node-config "$node_config"
  start "$silo-gate" deai release gate --runtime-api-address "127.0.0.1:$port" --insecure \
    --approved-fab "$RELEASE_SHA"
done
log "started ${#SILOS[@]} SuperNodes, each with a code gate"

# --- the run ------------------------------------------------------------------------------------
flwr run "$RELEASE" consortium --format json --run-config "$RUN_CONFIG" >"$WORK/logs/flwr-run.json"
FLWR_RUN=$(python -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["run-id"])' "$WORK/logs/flwr-run.json")
log "flwr run $FLWR_RUN submitted (contract $CONTRACT, run $RUN_ID); each silo trains, commits, reveals and attests"
# progress, as the chain records it (a line per round phase)
deai consortium watch --rpc "$RPC" --contract "$CONTRACT" --run-id "$RUN_ID" --timeout "$RUN_TIMEOUT_S" \
  2>>"$WORK/logs/watch.log" > >(while IFS= read -r line; do log "$line"; done) &
WATCH=$!
status=""
# every 5 s: each `flwr ls` is a process of its own, about a CPU-second
for _ in $(seq $(((RUN_TIMEOUT_S + 4) / 5))); do
  status=$(flwr ls consortium --run-id "$FLWR_RUN" --format json 2>/dev/null \
    | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])' 2>/dev/null || true)
  [[ "$status" == finished:* ]] && break
  sleep 5
done
flwr log "$FLWR_RUN" consortium --show >"$WORK/logs/serverapp.log" 2>&1 || true
log "flwr run $FLWR_RUN: $status"
[[ "$status" == "finished:completed" ]] || { echo "run_demo: the run ended as '$status'" >&2; exit 1; }

# --- results and verification -------------------------------------------------------------------
python - "$WORK/results/results.json" "$ROUNDS" <<'PY'
import json, sys
results, rounds = json.load(open(sys.argv[1])), int(sys.argv[2])
finalized = [r for r in results["rounds"] if r["status"] == "finalized"]
for r in results["rounds"]:
    fed = r.get("federated_evaluation", {})
    eps = r.get("epsilon")  # the largest ε a silo has spent by this round
    eps = f"{eps:.3f}" if isinstance(eps, (int, float)) else "n/a"
    print(f"round {r['round']}: {r['status']}, federated accuracy {fed.get('accuracy', float('nan')):.4f} "
          f"on {fed.get('num_examples', 0)} held-out examples of {len(fed.get('per_silo', {}))} silos, "
          f"max eps {eps}, {r['seconds']:.1f}s")
print(f"refused nodes: {results.get('refused_nodes', []) or 'none'}")
incentives = results.get("incentives", {})
for who, funds in sorted(incentives.get("participants", {}).items()):
    shares = [r for r, score in sorted(funds.get("score", {}).items()) if score > 0]
    print(f"silo {who}: paid {funds['payout'] / 1e18:.4f} ether by the {incentives.get('score', '?')} score "
          f"(rounds {', '.join(shares) or 'none'}), slashed {funds['slashed'] / 1e18:.4f}")
if len(finalized) != rounds:
    sys.exit(f"run_demo: {len(finalized)} of {rounds} rounds finalized")
PY
if [[ "$STORE" == ipfs:* ]]; then STORE_ARGS=(--store-api "${STORE#ipfs:}"); else STORE_ARGS=(--store-root "${STORE#local:}"); fi
deai verify --rpc "$RPC" --contract "$CONTRACT" --run-id "$RUN_ID" "${STORE_ARGS[@]}" | tee "$WORK/logs/verify.log"
log "every round finalized and verified; wall time $(( $(date +%s) - STARTED ))s"
