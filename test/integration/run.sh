#!/bin/sh
# Runs the integration tests in a private mount namespace: every mount they
# make dies with it, and the host's mount table never sees them. The outer
# namespace is passed on so the harness can check it really is private.
set -eu
SM_OUTER_MNT_NS=$(readlink /proc/self/ns/mnt)
export SM_OUTER_MNT_NS
exec unshare --mount --propagation private -- node --test --test-reporter=spec --test-concurrency=1 "$@"
