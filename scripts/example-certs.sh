#!/usr/bin/env bash
# Regenerate the EXAMPLE certificates that config/sluicegate.toml and
# config/examples/*.toml point at, so both start out of the box.
# They are throwaway test material (ECDSA P-256, long validity): never use
# them for anything real.
set -euo pipefail
cd "$(dirname "$0")/.."
days=3650

ca() { # ca NAME DIR
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=$1" -keyout "$2/$1.key" -out "$2/$1.pem" 2>/dev/null
}
leaf() { # leaf OUT CA_BASE DIR SAN...
  local out=$1 cab=$2 dir=$3; shift 3
  local san; san=$(printf 'DNS:%s,' "$@"); san=${san%,}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1" -keyout "$dir/$out.key" -out "$dir/$out.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$out.csr" -CA "$dir/$cab.pem" -CAkey "$dir/$cab.key" \
    -CAcreateserial -days $days -extfile <(printf 'subjectAltName=%s' "$san") \
    -out "$dir/$out.crt" 2>/dev/null
  rm -f "$dir/$out.csr"
}

d=config/certs
mkdir -p $d
ca ca $d
ca clients-ca $d
leaf internal ca $d '*.internal.example.com' redis1.example.com redis2.example.com
leaf default ca $d localhost
leaf client ca $d sluicegate-client
rm -f $d/*.srl

e=config/examples/certs
mkdir -p $e
ca ca $e
leaf redis.example.com ca $e redis.example.com
leaf postgres-tls-cert ca $e postgres.internal.example.com
rm -f $e/*.srl
echo "example certificates written to $d and $e"
