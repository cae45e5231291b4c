#!/bin/sh
# Starts Apache httpd with mod_auth_openidc as a BFF on 127.0.0.1:$BFF_CONFORMANCE_PORT, in the foreground,
# with its runtime files in a fresh directory that is removed when it stops. httpd.conf reads the rest of
# its settings from the environment the conformance harness passes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
APACHE_TARGET_DIR=$(mktemp -d /tmp/bff-conformance-apache.XXXXXX)
chmod 755 "$APACHE_TARGET_DIR"
mkdir -p "$APACHE_TARGET_DIR/www/protected"
echo 'signed in' >"$APACHE_TARGET_DIR/www/protected/index.html"
APACHE_TARGET_PASSPHRASE=$(head -c 32 /dev/urandom | base64)
export APACHE_TARGET_DIR APACHE_TARGET_PASSPHRASE
apache2 -f "$here/httpd.conf" -DFOREGROUND &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$APACHE_TARGET_DIR"' EXIT INT TERM
wait "$pid"
