#!/bin/sh
# Slurm Epilog (slurm.conf: Epilog=/usr/share/scratch_manager/slurm/epilog.sh):
# removes the pins the prolog made for this job, and only those; the datasets
# stay cached while they are read, and make room when they are not.
set -u
SCRATCH_MANAGER=${SCRATCH_MANAGER:-scratch_manager}
job=${SLURM_JOB_ID:-}
[ -n "$job" ] || exit 0
# shellcheck disable=SC2086
$SCRATCH_MANAGER unpin --owner "slurm-$job" >/dev/null 2>&1 || true
exit 0
