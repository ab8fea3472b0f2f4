#!/usr/bin/env bash
# Send one mail through a local trimail with curl; prints the JSON answer and the HTTP status.
#
#   TRIMAIL_URL=http://127.0.0.1:8080 TRIMAIL_API_KEY=... examples/send.sh [to] [subject]
#
# A 202 answer ({"id": "...", "status": "queued"}) means the mail was queued for delivery
# (exit 0); any 4xx or 5xx answer is printed too and the script exits 22 (curl's code for
# it). A 503 (queue_full) carries a Retry-After header saying when to try again.
set -euo pipefail

url="${TRIMAIL_URL:-http://127.0.0.1:8080}"
to="${1:-rcpt@example.com}"
subject="${2:-Hello from trimail}"

# Minimal JSON string escaping (backslash and double quote) for the two arguments.
json_escape() {
    local s="${1//\\/\\\\}"
    printf '%s' "${s//\"/\\\"}"
}

auth=()
if [[ -n "${TRIMAIL_API_KEY:-}" ]]; then
    auth=(-H "Authorization: Bearer ${TRIMAIL_API_KEY}")
fi

curl --silent --show-error --fail-with-body \
    -X POST "${url%/}/email/send" \
    -H "Content-Type: application/json" \
    ${auth[@]+"${auth[@]}"} \
    --write-out '\nHTTP %{http_code}\n' \
    --data-binary @- <<JSON
{
  "from": "Example <sender@example.com>",
  "to": "$(json_escape "$to")",
  "subject": "$(json_escape "$subject")",
  "text": "Sent with examples/send.sh."
}
JSON
