#!/usr/bin/env bash
# Installs the Python tools the archiving tests drive, pinned, into a
# virtualenv under target/: the aws CLI and moto's standalone S3 server
# (loopback only), and psycopg. Idempotent: a finished install is reused.
# Prints the virtualenv's bin directory; exits non-zero if the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
stamp="$venv/.installed-v1"
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'awscli==1.46.3' 'moto[server]==5.2.5' 'psycopg[binary]==3.2.10' >&2
    touch "$stamp"
fi
echo "$PWD/$venv/bin"
