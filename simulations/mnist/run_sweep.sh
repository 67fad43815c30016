#!/usr/bin/env bash
# Issue 12's sweep in priority order (each step resumable: finished runs are skipped), then the
# results page. Run from the repository root, in the background:
#   nohup simulations/mnist/run_sweep.sh > runs/sweep-issue12.log 2>&1 &
# Safe to stop and start again at any time.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S5=simulations/mnist/sweep-5k.toml
S60=simulations/mnist/sweep-60k.toml
step() { echo "=== $(date -u +%FT%TZ) $*"; python3 -m fedpriv.cli.main sweep run "$@"; }
report() {
  python3 -m fedpriv.cli.main sweep report "$S5" "$S60" --notes simulations/mnist/RESULTS_NOTES.md \
    --title "Results: distributed, local and central DP on MNIST" || true
}
# 1. the goals first: MNIST-5k distributed at epsilon 3 and 8, IID then Dirichlet
for s in dist-eps3/iid dist-eps8/iid dist-eps3/dirichlet dist-eps8/dirichlet; do step "$S5" --only "$s"; done
# 2. the ceiling on the same data
for s in central-eps3/ central-eps8/; do step "$S5" --only "$s"; done
report
# 3. the full training set, distributed epsilon 3, and its ceiling
step "$S60" --only dist-eps3/iid
step "$S60" --only central-eps3/iid
report
# 4. the rest of MNIST-5k
for s in dist-eps1/ central-eps1/ record-eps3/ record-eps8/ record-eps1/ nonprivate/; do step "$S5" --only "$s"; done
report
# 5. the rest of 60k
for s in dist-eps8/iid central-eps8/iid dist-eps3/dirichlet central-eps3/dirichlet client-eps8/iid/seed0 \
         record-eps3/iid dist-eps1/iid central-eps1/iid; do step "$S60" --only "$s"; done
report
step "$S60"
report
