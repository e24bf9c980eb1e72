#!/bin/sh
# Slurm Prolog (slurm.conf: Prolog=/usr/share/scratch_manager/slurm/prolog.sh),
# run as root on each node of a job before it starts: pins the datasets the
# job names in its comment, e.g.
#     sbatch --comment=datasets:coco,imagenet --time=4:00:00 train.sh
#     sbatch --comment="sweep 7, lr=0.1; datasets:coco" train.sh
# for the job's time limit, so that they are cached by the time it reads them
# (a copy started now usually ends before the job's first epoch does). The
# pin's owner is the job (slurm-<id>), so the epilog removes this job's pins
# only. `scratch_manager pin --slurm-job` reads the job from Slurm's JSON
# (scontrol --json, or squeue --json on Slurm 22.05), never from text split on
# spaces.
# Never fails or holds up the job: a problem here only means no warm cache
# (logged to syslog), and the prolog always exits 0 (a failing prolog would
# drain the node).
set -u
SCRATCH_MANAGER=${SCRATCH_MANAGER:-scratch_manager}
job=${SLURM_JOB_ID:-}
[ -n "$job" ] || exit 0
# Slurm hands the prolog the job's comment in SLURM_JOB_COMMENT, set only when
# the job has one (22.05 does, with SLURM_SCRIPT_CONTEXT): a job that names no
# dataset, most of them, costs nothing more, not even a call to slurmctld
# (which Slurm's documentation asks prologs to avoid). An older Slurm, without
# SLURM_SCRIPT_CONTEXT, is asked.
if [ -n "${SLURM_SCRIPT_CONTEXT:-}" ]; then
  case ${SLURM_JOB_COMMENT:-} in
    *datasets:*) ;;
    *) exit 0 ;;
  esac
fi
# shellcheck disable=SC2086 # SCRATCH_MANAGER may be a command with arguments
err=$(timeout 60 $SCRATCH_MANAGER pin --slurm-job "$job" 2>&1 >/dev/null)
rc=$?
if [ "$rc" -ne 0 ] || [ -n "$err" ]; then
  logger -t scratch_manager -p daemon.warning "prolog: job $job: ${err:-scratch_manager pin exited with status $rc}" 2>/dev/null
fi
exit 0
