#!/bin/sh
# Issues this node's etcd certificate for its own address from the cluster CA, then
# deletes the CA key: a node can prove who it is, never issue for anyone else.
# usage: issue-cert.sh PKI_DIR [ROLE]   (holds ca.crt and ca.key; writes node.crt, node.key)
#
# The certificate: a new EC P-256 key; subject CN = the host name (ROLE member, the
# default) or no CN at all (ROLE proxy: etcd's gRPC proxy, 3.4 and 3.5, refuses a client
# certificate whose subject has a Common Name: "cert has non empty Common Name");
# SANs = the node's IPv4 (the address of its etcd URLs), 127.0.0.1 and the host name;
# extended key usage serverAuth and clientAuth (the same certificate serves etcd's
# client and peer ports, or the proxy's, and is the agent's (and proxy's) client
# certificate); valid 3650 days. 127.0.0.1 is there because
# etcd checks an incoming peer certificate's IP SANs against the connection's source
# address, which is 127.0.0.1 for connections over loopback (the lab).
#
# The address is the agent's: EC2 metadata local-ipv4, else the first ipv4 network of
# OpenStack's network_data.json (agent/cloud_openstack.py, _my_ipv4); on a cloud with a
# config drive and no metadata service, cloud-init's instance data (ds.ec2_metadata
# local-ipv4, else an ipv4 network of ds.network_json), as the agent reads it too. The lab
# and the tests set AUTOSCALE_NODE_IP, AUTOSCALE_NODE_NAME, AUTOSCALE_METADATA_URL,
# AUTOSCALE_INSTANCE_DATA and AUTOSCALE_PKI_GROUP (the group that may read the key;
# default etcd) instead.
set -eu
pki="$1"
[ -s "${pki}/node.crt" ] && [ ! -e "${pki}/ca.key" ] && exit 0
md="${AUTOSCALE_METADATA_URL:-http://169.254.169.254}"
instance_data="${AUTOSCALE_INSTANCE_DATA:-/run/cloud-init/instance-data.json}"
node_ip() {
    curl -fsS --connect-timeout 3 --retry 3 "${md}/latest/meta-data/local-ipv4" && return 0
    curl -fsS --connect-timeout 3 --retry 3 "${md}/openstack/latest/network_data.json" \
        2>/dev/null | python3 -c \
        'import json,sys; print(next(n["ip_address"] for n in json.load(sys.stdin)["networks"] if n.get("type") == "ipv4"))' \
        2>/dev/null && return 0
    python3 -c '
import json, sys
ds = json.load(open(sys.argv[1])).get("ds") or {}
found = [(ds.get("ec2_metadata") or {}).get("local-ipv4")]
found += [n.get("ip_address") for n in (ds.get("network_json") or {}).get("networks", []) if n.get("type") == "ipv4"]
print(next(a for a in found if a))' "${instance_data}"
}
ip="${AUTOSCALE_NODE_IP:-$(node_ip)}"
name="${AUTOSCALE_NODE_NAME:-$(hostname)}"
case "${2:-member}" in
    member) subject="/CN=${name}" ;;
    proxy) subject="/O=autoscale-etcd/OU=proxy" ;;
    *) echo "issue-cert.sh: ROLE is member or proxy, not '$2'" >&2; exit 1 ;;
esac
case "${ip}" in
    *[!0-9.]* | "") echo "issue-cert.sh: not an IPv4 address: '${ip}'" >&2; exit 1 ;;
esac
umask 077
ext="${pki}/node.ext"
printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "${ip}" "${name}" >"${ext}"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "${subject}" \
    -keyout "${pki}/node.key" -out "${pki}/node.csr"
openssl x509 -req -in "${pki}/node.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
    -CAcreateserial -days 3650 -extfile "${ext}" -out "${pki}/node.crt"
rm -f "${ext}" "${pki}/node.csr" "${pki}/ca.key" "${pki}/ca.srl"
chgrp "${AUTOSCALE_PKI_GROUP:-etcd}" "${pki}/node.key" && chmod 0640 "${pki}/node.key"
chmod 0644 "${pki}/node.crt" "${pki}/ca.crt"
