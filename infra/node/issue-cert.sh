#!/bin/sh
# Issues this node's etcd certificate for its own address from the cluster CA, then
# deletes the CA key: a node can prove who it is, never issue for anyone else.
# usage: issue-cert.sh PKI_DIR   (holds ca.crt and ca.key; writes node.crt, node.key)
set -eu
pki="$1"
[ -s "${pki}/node.crt" ] && [ ! -e "${pki}/ca.key" ] && exit 0
ip="$(curl -fsS --retry 5 http://169.254.169.254/latest/meta-data/local-ipv4)"
name="$(hostname)"
ext="$(mktemp)"
printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "${ip}" "${name}" >"${ext}"
umask 077
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=${name}" \
    -keyout "${pki}/node.key" -out "${pki}/node.csr"
openssl x509 -req -in "${pki}/node.csr" -CA "${pki}/ca.crt" -CAkey "${pki}/ca.key" \
    -CAcreateserial -days 3650 -extfile "${ext}" -out "${pki}/node.crt"
rm -f "${ext}" "${pki}/node.csr" "${pki}/ca.key" "${pki}/ca.srl"
chgrp etcd "${pki}/node.key" && chmod 0640 "${pki}/node.key"
chmod 0644 "${pki}/node.crt" "${pki}/ca.crt"
