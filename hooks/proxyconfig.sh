#!/bin/sh
# proxyconfig: runs once on every etcd proxy node once its gRPC proxy is up,
# e.g. to make it a mongos as well. It gets AUTOSCALE_CLUSTER,
# AUTOSCALE_ENDPOINTS (the cluster's members) and AUTOSCALE_PROXY_URL.
set -eu
echo "proxyconfig: proxy for ${AUTOSCALE_CLUSTER} at ${AUTOSCALE_PROXY_URL}"
