#!/usr/bin/env bash
# Validation tuning for federated settings (local record-level DP): each candidate runs the
# federated simulation with 10% of the training data held out (data.validation_fraction = 0.1)
# and scored on it; the official test set is never read.
# Usage: simulations/mnist/tune_federated.sh BASE.toml OUT.jsonl "KEY=V ..." ["KEY=V ..."]...
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
base=$1; out=$2; shift 2
tmp=$(mktemp -d)
for combo in "$@"; do
  sets=(--set data.validation_fraction=0.1)
  for kv in $combo; do sets+=(--set "$kv"); done
  rm -rf "$tmp/run"
  python3 -m fedpriv.cli.main simulate --config "$base" "${sets[@]}" --out "$tmp/run" --quiet >/dev/null 2>&1
  acc=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(json.dumps({'accuracy': m['rounds'][-1]['heldout_accuracy'], 'heldout_set': m.get('heldout_set'), 'wall_seconds': m.get('wall_seconds')}))" "$tmp/run/metrics.json" 2>/dev/null)
  echo "{\"combo\": \"$combo\", \"result\": ${acc:-null}}" >> "$out"
done
rm -rf "$tmp"
