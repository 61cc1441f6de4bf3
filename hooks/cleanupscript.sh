#!/bin/sh
# cleanupscript: runs on a node after its etcd member was removed and before
# Heat deletes the server (the original stopped CockroachDB cleanly here).
# It gets the same AUTOSCALE_* variables as configscript, and
# AUTOSCALE_REASON: why the node is leaving.
set -eu
echo "cleanupscript: ${AUTOSCALE_NODE_NAME} leaving ${AUTOSCALE_CLUSTER}: ${AUTOSCALE_REASON}"
