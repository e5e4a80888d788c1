#!/bin/bash
# The documentation's nightly backup script, hardened. Run daily at 2:00 AM:
#   0 2 * * * /usr/local/bin/thunderdb-backup.sh
#
# Differences from the page's script:
# - a refused POST (409 while another backup runs, 400 for a bad or
#   non-empty destination) fails at once with the server's message, instead
#   of polling the status of an empty backup id forever;
# - polling gives up after THUNDERDB_BACKUP_TIMEOUT seconds, and fails on an
#   unreachable server or a 404;
# - a failed backup prints the server's error.
#
# Settings (environment): THUNDERDB_ADMIN_URL (http://localhost:8088),
# BACKUP_DIR (/backups/thunderdb), RETENTION_DAYS (7), POLL_SECONDS (10),
# THUNDERDB_BACKUP_TIMEOUT (21600), THUNDERDB_ADMIN_TOKEN (optional bearer
# token), THUNDERDB_BIN (thunderdb).
set -euo pipefail

URL="${THUNDERDB_ADMIN_URL:-http://localhost:8088}"
BACKUP_DIR="${BACKUP_DIR:-/backups/thunderdb}"
RETENTION_DAYS="${RETENTION_DAYS:-7}"
POLL_SECONDS="${POLL_SECONDS:-10}"
TIMEOUT="${THUNDERDB_BACKUP_TIMEOUT:-21600}"
THUNDERDB_BIN="${THUNDERDB_BIN:-thunderdb}"
DATE=$(date +%Y%m%d)
DEST="${BACKUP_DIR}/full-${DATE}"

auth=()
if [ -n "${THUNDERDB_ADMIN_TOKEN:-}" ]; then
    auth=(-H "Authorization: Bearer ${THUNDERDB_ADMIN_TOKEN}")
fi

fail() {
    echo "[$(date)] ERROR: $*" >&2
    exit 1
}

echo "[$(date)] Starting ThunderDB backup..."
body=$(jq -cn --arg d "$DEST" '{destination: $d, include_wal: true, compress: true}')
response=$(curl -sS "${auth[@]}" -X POST "${URL}/admin/backup" -H "Content-Type: application/json" \
    -d "$body" -w '\n%{http_code}') || fail "cannot reach ${URL}"
code=$(tail -n 1 <<<"$response")
response=$(sed '$d' <<<"$response")
if [ "$code" != "202" ]; then
    message=$(jq -r '.error // empty' <<<"$response" 2>/dev/null || true)
    fail "the server refused the backup (HTTP ${code}): ${message:-$response}"
fi
BACKUP_ID=$(jq -r '.backup_id // empty' <<<"$response")
[ -n "$BACKUP_ID" ] || fail "no backup_id in the server's answer: $response"
echo "[$(date)] Backup started: $BACKUP_ID"

deadline=$(( $(date +%s) + TIMEOUT ))
while true; do
    status_json=$(curl -sS "${auth[@]}" -w '\n%{http_code}' "${URL}/admin/backup/status/${BACKUP_ID}") ||
        fail "cannot reach ${URL} while backup ${BACKUP_ID} runs"
    code=$(tail -n 1 <<<"$status_json")
    status_json=$(sed '$d' <<<"$status_json")
    [ "$code" = "200" ] || fail "status of ${BACKUP_ID}: HTTP ${code}: ${status_json}"
    STATUS=$(jq -r '.status' <<<"$status_json")
    if [ "$STATUS" = "completed" ]; then
        echo "[$(date)] Backup completed successfully"
        break
    elif [ "$STATUS" = "failed" ]; then
        fail "Backup failed: $(jq -r '.error' <<<"$status_json")"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        fail "backup ${BACKUP_ID} still ${STATUS} after ${TIMEOUT}s; giving up (it keeps running on the server)"
    fi
    sleep "$POLL_SECONDS"
done

"$THUNDERDB_BIN" --verify-backup "$DEST"

find "${BACKUP_DIR}" -maxdepth 1 -name "full-*" -mtime +"${RETENTION_DAYS}" -exec rm -rf {} \;
echo "[$(date)] Cleaned up backups older than ${RETENTION_DAYS} days"
echo "[$(date)] Backup process complete"
