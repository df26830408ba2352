#!/usr/bin/env bash
# Development certificates for TLS between fifoq and RabbitMQ (AMQPS and the management API).
#
#   scripts/gen_certs.sh [--force] [CLIENT_NAME...]
#
# Writes into $CERTS_DIR (default .certs at the repo top, gitignored):
#   ca.pem, ca.key            a development certificate authority (10 years)
#   server.pem, server.key    the broker's certificate: localhost, 127.0.0.1, ::1, this host's
#                             names and $CERT_EXTRA_SANS (e.g. "DNS:rabbitmq1,DNS:rabbitmq2")
#   client.pem, client.key    a client certificate (CN=fifoq-client), plus one per CLIENT_NAME
#                             (CN=CLIENT_NAME, e.g. one per broker user)
# Existing files are kept (idempotent) unless --force. Keys are created mode 0600.
# For development and tests only: in production use certificates from your own PKI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CERTS_DIR=${CERTS_DIR:-$ROOT/.certs}
DAYS=${CERT_DAYS:-825}
FORCE=0
CLIENTS=(fifoq-client)
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "gen_certs: unknown option $arg" >&2; exit 2 ;;
    *)
      [[ "$arg" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || { echo "gen_certs: bad client name '$arg'" >&2; exit 2; }
      CLIENTS+=("$arg") ;;
  esac
done

command -v openssl >/dev/null || { echo "gen_certs: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$CERTS_DIR"
cd "$CERTS_DIR"
umask 077

say() { echo "gen_certs: $*"; }

if [ "$FORCE" = 1 ]; then rm -f ca.* server.* client.* ./*.csr ./*.ext ./*.srl; fi

if [ ! -s ca.pem ] || [ ! -s ca.key ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout ca.key -out ca.pem -subj "/O=fifoq development/CN=fifoq development CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  say "created $CERTS_DIR/ca.pem"
fi

# sign NAME EXTFILE-CONTENT SUBJECT
sign() {
  local name=$1 ext=$2 subject=$3
  if [ -s "$name.pem" ] && [ -s "$name.key" ]; then return 0; fi
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$name.key" -out "$name.csr" -subj "$subject" 2>/dev/null
  printf '%s\n' "$ext" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  say "created $CERTS_DIR/$name.pem"
}

SANS="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:$(hostname -s)"
[ "$(hostname -f 2>/dev/null || hostname)" != "$(hostname -s)" ] && SANS="$SANS,DNS:$(hostname -f 2>/dev/null || hostname)"
[ -n "${CERT_EXTRA_SANS:-}" ] && SANS="$SANS,$CERT_EXTRA_SANS"
sign server "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$SANS" "/O=fifoq development/CN=localhost"

for client in "${CLIENTS[@]}"; do
  file=client
  [ "$client" != fifoq-client ] && file="client-$client"
  sign "$file" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" "/O=fifoq development/CN=$client"
done

# Certificates are public; keys stay private to their owner.
chmod 0644 ./*.pem
chmod 0600 ./*.key
say "certificates in $CERTS_DIR (CA: ca.pem)"
