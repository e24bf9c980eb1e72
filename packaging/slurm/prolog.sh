#!/bin/sh
# Slurm Prolog (slurm.conf: Prolog=/usr/share/scratch_manager/slurm/prolog.sh),
# run as root on each node of a job before it starts: pins the datasets the
# job names in its comment, e.g.
#     sbatch --comment=datasets:coco,imagenet --time=4:00:00 train.sh
# for the job's time limit, so that they are cached by the time it reads them
# (a copy started now usually ends before the job's first epoch does). The
# pin's owner is the job, so the epilog removes this job's pins only.
# Never fails the job: a problem here only means no warm cache.
set -u
SCRATCH_MANAGER=${SCRATCH_MANAGER:-scratch_manager}
job=${SLURM_JOB_ID:-}
[ -n "$job" ] || exit 0
info=$(scontrol show job "$job" 2>/dev/null) || exit 0

field() { printf '%s\n' "$info" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }

comment=$(field Comment)
case $comment in
  datasets:*) ;;
  *) exit 0 ;;
esac
names=$(printf '%s' "${comment#datasets:}" | tr ',' ' ')

# TimeLimit is [D-]HH:MM:SS, MM:SS or UNLIMITED; an unlimited job's pins last a week
# (the epilog removes them when it ends anyway).
limit=$(field TimeLimit)
seconds=$(printf '%s\n' "$limit" | awk -F'[-:]' '
  /UNLIMITED|Partition_Limit/ { print 604800; exit }
  NF == 4 { print (($1 * 24 + $2) * 60 + $3) * 60 + $4; exit }
  NF == 3 { print ($1 * 60 + $2) * 60 + $3; exit }
  NF == 2 { print $1 * 60 + $2; exit }
  { print 604800 }')

# shellcheck disable=SC2086 # SCRATCH_MANAGER may be a command with arguments; names are split on purpose
$SCRATCH_MANAGER pin $names --for "${seconds}s" --owner "slurm-$job" >/dev/null 2>&1 ||
  logger -t scratch_manager "prolog: could not pin $names for job $job" 2>/dev/null
exit 0
