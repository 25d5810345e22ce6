#!/bin/sh
# Report usage to the metering-sidecar from a shell, with curl alone (docs/api.md):
#   metering-report.sh DIMENSION QUANTITY [ID]
# The idempotency key (ID, or a new UUID) is chosen once, before the first attempt, and every retry sends the
# same body: a report whose answer was lost is counted once. Retried: no socket yet, a refused or lost
# connection, 429 and 503, up to 8 attempts with a growing pause; any other answer but 202 is final (exit 1).
# METERING_SOCKET names the socket (default /run/metering/metering.sock); METERING_TAGS, if set, is the tags
# object as JSON ('{"tenant":"acme"}'). DIMENSION is a plain name (it is not JSON-escaped).
set -u
dimension=$1 quantity=$2
id=${3:-$(cat /proc/sys/kernel/random/uuid)}
socket=${METERING_SOCKET:-/run/metering/metering.sock}
tags=${METERING_TAGS:+,\"tags\":$METERING_TAGS}
body="{\"dimension\":\"$dimension\",\"quantity\":$quantity$tags,\"id\":\"$id\"}"
attempt=1
while :; do
  answer=$(curl --silent --max-time 10 --unix-socket "$socket" -H 'content-type: application/json' \
    --data "$body" --write-out '\n%{http_code}' http://localhost/v1/usage)
  status=${answer##*
}
  case $status in
    202) printf '%s\n' "${answer%
*}"; exit 0 ;;
    000 | 429 | 503) ;;
    *) printf 'metering-report: HTTP %s %s\n' "$status" "${answer%
*}" >&2; exit 1 ;;
  esac
  if [ "$attempt" -ge 8 ]; then
    echo "metering-report: not delivered after $attempt attempts; resend with id $id" >&2
    exit 1
  fi
  sleep "$(awk "BEGIN { print 0.25 * $attempt }")"
  attempt=$((attempt + 1))
done
