#!/usr/bin/env bash
# Hyperparameter search for DP-SGD over the union (central and distributed DP share the
# mechanism: one noisy clipped step per round over all records, fixed denominator q*N).
# Every candidate trains on 90% of the clients' training data and is scored on the other 10%
# (`fedpriv central --validation 0.1`): the official test set is never looked at while tuning.
# Usage: simulations/mnist/tune.sh BASE.toml OUT.jsonl EPSILONS "KEY=V ..." ["KEY=V ..."]...
set -u
# One thread per run: the machine this ran on was shared.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
base=$1; out=$2; eps_list=$3; shift 3
for eps in $eps_list; do
  for combo in "$@"; do
    sets=(--set privacy.target_epsilon=$eps --set privacy.max_epsilon=$eps --set simulation.eval_every=100000)
    for kv in $combo; do sets+=(--set "$kv"); done
    res=$(python3 -m fedpriv.cli.main central --config "$base" "${sets[@]}" --validation 0.1 --quiet 2>/dev/null | tail -1)
    echo "{\"epsilon\": $eps, \"combo\": \"$combo\", \"result\": ${res:-null}}" >> "$out"
  done
done
