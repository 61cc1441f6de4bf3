#!/bin/sh
# configscript: runs once on every node after its etcd member has joined.
# Replace it with the script that installs and starts the service using etcd
# (the original started CockroachDB here). The agent passes:
#   AUTOSCALE_CLUSTER     the cluster's name
#   AUTOSCALE_ENDPOINTS   comma-separated etcd client URLs of the current members
#   AUTOSCALE_NODE_NAME   this node's name (its etcd member name)
#   AUTOSCALE_NODE_IP     this node's IPv4 address
#   AUTOSCALE_IS_LEADER   "true" when this node's etcd is the leader right now
# A service where one node starts and the others join: start when
# AUTOSCALE_IS_LEADER is true, join one of AUTOSCALE_ENDPOINTS' hosts otherwise.
# A non-zero exit is logged and retried on the agent's next cycle.
set -eu
echo "configscript: ${AUTOSCALE_NODE_NAME} (${AUTOSCALE_NODE_IP}) joined ${AUTOSCALE_CLUSTER};" \
     "leader=${AUTOSCALE_IS_LEADER}; endpoints=${AUTOSCALE_ENDPOINTS}"
