#!/usr/bin/env bash
# Development-only PKI for docker/compose.yaml. NOT for production: use your hospital's PKI.
#
# Writes, next to this script:
#   certs/ca.crt                      dev CA certificate (EC P-384, CA:TRUE); its key is discarded
#   certs/server.pem, certs/server.key  SuperLink TLS certificate and key (EC P-384), SAN
#                                       DNS:superlink, DNS:localhost, IP:127.0.0.1, IP:::1,
#                                       EKU serverAuth
#   keys/<site>, keys/<site>.pub       SuperNode auth keys (ECDSA P-384, OpenSSH format)
#
# SAN notes: sites dial superlink:8000 on the compose network; admins dial 127.0.0.1:8000 or
# localhost:8000; and a SuperLink bound to 0.0.0.0 starts its own SuperExec against
# 127.0.0.1:<port>, verified against this CA, so IP:127.0.0.1 is required.
#
# Usage: docker/make-dev-certs.sh [--force] [SITE ...]     (default sites: site-a site-b site-c)
# Refuses to overwrite existing certificates or keys unless --force is given; --force
# replaces everything (the CA changes, so re-register the new site keys afterwards).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

force=0
sites=()
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
        *)
            if [[ ! "$1" =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]]; then
                echo "invalid site name '$1' (lower-case letters, digits and '-')" >&2
                exit 2
            fi
            sites+=("$1")
            ;;
    esac
    shift
done
((${#sites[@]})) || sites=(site-a site-b site-c)

for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
certs="$here/certs"
keys="$here/keys"
days_ca=730
days_server=365

outputs=("$certs/ca.crt" "$certs/server.pem" "$certs/server.key")
for site in "${sites[@]}"; do
    outputs+=("$keys/$site" "$keys/$site.pub")
done

existing=()
for f in "${outputs[@]}"; do
    [[ -e "$f" ]] && existing+=("$f")
done
if ((${#existing[@]})); then
    if ((!force)); then
        echo "refusing to overwrite existing files (re-run with --force to replace them all):" >&2
        printf '  %s\n' "${existing[@]}" >&2
        exit 1
    fi
    rm -f -- "${existing[@]}"
fi

umask 077
mkdir -p "$certs" "$keys"
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT

# Development CA. Its private key stays in the temp folder and is deleted on exit, so no
# further certificates can be issued from it; re-run with --force to rotate everything.
cat >"$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = fedclinic development CA (not for production)
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/ca.key" 2>/dev/null
openssl req -new -x509 -config "$work/ca.cnf" -key "$work/ca.key" -sha384 \
    -days "$days_ca" -out "$certs/ca.crt"

# SuperLink server certificate, signed by the CA.
cat >"$work/server.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = superlink
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:superlink, DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$certs/server.key" 2>/dev/null
openssl req -new -config "$work/server.cnf" -key "$certs/server.key" -sha384 -out "$work/server.csr"
openssl x509 -req -in "$work/server.csr" -CA "$certs/ca.crt" -CAkey "$work/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha384 -days "$days_server" \
    -extfile "$work/server.cnf" -extensions server -out "$certs/server.pem" 2>/dev/null
openssl verify -CAfile "$certs/ca.crt" "$certs/server.pem" >/dev/null

# SuperNode authentication keys: EC keys in OpenSSH format, as flower-supernode expects.
for site in "${sites[@]}"; do
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedclinic-$site" -f "$keys/$site"
done

chmod 0644 "$certs/ca.crt" "$certs/server.pem"
chmod 0600 "$certs/server.key"
for site in "${sites[@]}"; do chmod 0600 "$keys/$site"; chmod 0644 "$keys/$site.pub"; done

echo "wrote $certs/{ca.crt,server.pem,server.key}"
for site in "${sites[@]}"; do echo "wrote $keys/$site (private) and $keys/$site.pub"; done
echo "next: register each site key, e.g. flwr supernode register $keys/${sites[0]}.pub <connection> --name ${sites[0]}"
