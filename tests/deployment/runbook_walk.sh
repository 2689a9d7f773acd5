#!/usr/bin/env bash
# docs/deployment.md walked on one machine, step by step as it is written: the admin (who
# also coordinates) and three hospitals, each in a shell of its own with its own HOME, the
# files that travel between them copied. Each party's commands are the runbook's, with the
# values it prints (addresses, the run id, the release hash) read from the output as a
# reader would. tests/deployment/test_runbook.py runs it; keep the two in step.
#
#   bash tests/deployment/runbook_walk.sh TRIAL_DIR
#
# Ports (environment): CHAIN_PORT (8545), LINK_PORT (9093), NODE_PORT0 (9094; the silos
# take it and the two after it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=$(mkdir -p "$1" && cd "$1" && pwd)
CHAIN_PORT=${CHAIN_PORT:-8545} LINK_PORT=${LINK_PORT:-9093} NODE_PORT0=${NODE_PORT0:-9094}
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}   # the user's cache (anvil), whatever HOME a party has
mkdir -p $T/admin $T/silo-0 $T/silo-1 $T/silo-2
export RPC=http://127.0.0.1:$CHAIN_PORT LINK=127.0.0.1:$LINK_PORT STORE=local:$T/store APP=$T/app
export CHAIN_PORT LINK_PORT T
# the approved release: a snapshot of this checkout's FAB, so that edits meanwhile change nothing
python -c 'import sys; from pathlib import Path; from deai_flower.consortium.release import build_fab, unpack_fab
unpack_fab(build_fab(Path(sys.argv[1])), Path(sys.argv[2]))' "$REPO" $APP
party() { echo "=== $1: step $2"; HOME=$T/$1 bash -euo pipefail -s; }
stamp() { echo "--- $(date +%T) $*"; }

stamp 0 chain
party admin 0 <<'EOF'
deai local start --dir ~/run chain -- deai local chain --port $CHAIN_PORT
EOF
for _ in $(seq 60); do grep -q "Listening on" $T/admin/run/logs/chain.log 2>/dev/null && break; sleep 1; done
tail -1 $T/admin/run/logs/chain.log

stamp 1 admin key, funds, deploy
party admin 1 <<'EOF'
deai consortium keystore --out ~/keys --name admin
ADDR=0x$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' ~/keys/admin.keystore.json)
deai consortium fund --rpc $RPC $ADDR
ADMIN="--keystore $T/admin/keys/admin.keystore.json --password-file $T/admin/keys/admin.password"
deai consortium deploy --rpc $RPC $ADMIN | tee ~/deploy.out
EOF
export CONTRACT=$(grep -o '0x[0-9a-fA-F]\{40\}' $T/admin/deploy.out | head -1)

stamp 2 silos: keys, data
for i in 0 1 2; do
  SILO=silo-$i party silo-$i 2 <<'EOF'
deai consortium keystore --out ~/keys --name chain
deai consortium supernode-key --out ~/keys --name supernode
deai consortium demo-data --out ~/demo --silos 3 dataset=breast_cancer
EOF
  cp $T/silo-$i/keys/supernode.pub $T/admin/silo-$i.pub
done

stamp 3 admin: fund and register silos
for i in 0 1 2; do
  ADDR=0x$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' $T/silo-$i/keys/chain.keystore.json)
  I=$i A=$ADDR party admin 3 <<'EOF'
deai consortium fund --rpc $RPC $A
ADMIN="--keystore $T/admin/keys/admin.keystore.json --password-file $T/admin/keys/admin.password"
deai consortium register --rpc $RPC --contract $CONTRACT $ADMIN --silo $A --supernode-key ~/silo-$I.pub
EOF
done

stamp 4 coordinator: tls, superlink, connection
party admin 4 <<'EOF'
deai consortium tls --out ~/tls
deai local start --dir ~/run superlink -- flower-superlink --ssl-ca-certfile ~/tls/ca.crt \
    --ssl-certfile ~/tls/server.pem --ssl-keyfile ~/tls/server.key --enable-supernode-auth \
    --host 127.0.0.1 --port $LINK_PORT --database ~/superlink.db --disable-runtime-dependency-installation
EOF
for i in 0 1 2; do cp $T/admin/tls/ca.crt $T/silo-$i/ca.crt; done
for _ in $(seq 120); do curl -sf --cacert $T/admin/tls/ca.crt https://$LINK/health >/dev/null && break; sleep 1; done
grep -m1 "Starting Flower SuperLink" $T/admin/run/logs/superlink.log || { echo "no 'Starting Flower SuperLink' line"; head -5 $T/admin/run/logs/superlink.log; }
mkdir -p $T/admin/.flwr
cat > $T/admin/.flwr/config.toml <<TOML
[superlink]
default = "consortium"

[superlink.consortium]
address = "$LINK"
root-certificates = "$T/admin/tls/ca.crt"
TOML
party admin 4b <<'EOF'
flwr supernode register ~/silo-0.pub consortium
flwr supernode register ~/silo-1.pub consortium
flwr supernode register ~/silo-2.pub consortium
flwr supernode list consortium
EOF

stamp 5 admin: create-run
party admin 5 <<'EOF'
ADMIN="--keystore $T/admin/keys/admin.keystore.json --password-file $T/admin/keys/admin.password"
deai consortium create-run --rpc $RPC --contract $CONTRACT $ADMIN \
    --store $STORE --output-dir ~/runs/1 \
    num_rounds=2 dataset=breast_cancer training.local_epochs=1 training.batch_size=16 | tee ~/create-run.out
EOF
export RUN_ID=$(sed -n 's/^created run \([0-9]*\) .*/\1/p' $T/admin/create-run.out)

stamp 6 silos: node config, check, supernode, gate
for i in 0 1 2; do
  cat > $T/silo-$i/node-config.toml <<TOML
keystore = "$T/silo-$i/keys/chain.keystore.json"
password-file = "$T/silo-$i/keys/chain.password"
data-path = "$T/silo-$i/demo/silo-$i/train.npz"
eval-data-path = "$T/silo-$i/demo/silo-$i/eval.npz"
chain-url = "$RPC"
store = "$STORE"
ledger-dir = "$T/silo-$i/ledgers"
device = "cpu"
contract = "$CONTRACT"
runs = "$RUN_ID"
TOML
  NODE_PORT=$((NODE_PORT0 + i)) party silo-$i 6 <<'EOF'
deai release hash $APP | tee ~/hash.out
deai silo check --node-config ~/node-config.toml
deai local start --dir ~/run supernode -- flower-supernode --root-certificates ~/ca.crt \
    --superlink $LINK --auth-supernode-private-key ~/keys/supernode --port $NODE_PORT \
    --isolation process --node-config ~/node-config.toml
deai local start --dir ~/run gate -- deai release gate --runtime-api-address 127.0.0.1:$NODE_PORT \
    --insecure --approved-fab $(cut -d' ' -f1 ~/hash.out)
EOF
done
for _ in $(seq 60); do
  n=$(HOME=$T/admin flwr supernode list consortium --format json | python -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if str(n["status"]).startswith("online")))')
  [[ $n == 3 ]] && break; sleep 2
done
HOME=$T/admin flwr supernode list consortium

stamp 7 coordinator: run
RUN_CMD=$(sed -n 's/^    \(flwr run .*\)$/\1/p' $T/admin/create-run.out)
echo "$RUN_CMD" > $T/admin/run-cmd.sh
( cd $APP && HOME=$T/admin bash $T/admin/run-cmd.sh > $T/admin/flwr-run.out 2>&1 ) &
RUNPID=$!
party admin 7 <<'EOF'
deai consortium watch --rpc $RPC --contract $CONTRACT --run-id 1 --timeout 1500
EOF
wait $RUNPID || true
tail -5 $T/admin/flwr-run.out
party admin 7b <<'EOF'
flwr ls consortium --format json
EOF

stamp 8 verify
party admin 8 <<'EOF'
deai verify --rpc $RPC --contract $CONTRACT --run-id 1 --store-root $T/store
EOF
ls $T/admin/runs/1

stamp stop
for who in silo-0 silo-1 silo-2 admin; do party $who stop <<'EOF'
deai local stop --dir ~/run
EOF
done
stamp done
