#!/bin/sh
# Slurm Epilog (slurm.conf: Epilog=/usr/share/scratch_manager/slurm/epilog.sh):
# removes the pins the prolog made for this job, and only those; the datasets
# stay cached while they are read, and make room when they are not.
# Always exits 0: a failing epilog would drain the node.
set -u
SCRATCH_MANAGER=${SCRATCH_MANAGER:-scratch_manager}
job=${SLURM_JOB_ID:-}
[ -n "$job" ] || exit 0
# As in the prolog: a job whose comment names no dataset has no pin to remove.
# (Were its comment changed while it ran, its pins still end with its time limit.)
if [ -n "${SLURM_SCRIPT_CONTEXT:-}" ]; then
  case ${SLURM_JOB_COMMENT:-} in
    *datasets:*) ;;
    *) exit 0 ;;
  esac
fi
# shellcheck disable=SC2086 # SCRATCH_MANAGER may be a command with arguments
timeout 60 $SCRATCH_MANAGER unpin --owner "slurm-$job" >/dev/null 2>&1 || true
exit 0
