#!/bin/sh
# async-mail-service with nothing but curl: an account, a message with an attachment, the
# service's status, and the message's delivery record (what the proxy_sync report carries).
#
#   MAIL_API_URL=http://127.0.0.1:8000 SMTP_HOST=127.0.0.1 SMTP_PORT=2525 \
#   TO=you@example.org sh examples/curl_demo.sh
#
# MAIL_API_TOKEN: the service's [server] api_token, if set.  MESSAGE_ID: the id to queue
# under (default demo-<time>); the same id again replaces the message while it is unsent.
set -eu

API=${MAIL_API_URL:-http://127.0.0.1:8000}
TOKEN=${MAIL_API_TOKEN:-}
ID=${MESSAGE_ID:-demo-$(date +%s)}

api() {  # api METHOD PATH [JSON BODY]: one call, its JSON answer on stdout, fails on 4xx/5xx
    curl -sS --fail-with-body -X "$1" "$API$2" \
         -H 'Content-Type: application/json' ${TOKEN:+-H "X-API-Token: $TOKEN"} \
         ${3:+--data-binary "$3"}
    echo
}

echo "== 1. an SMTP account (created, or replaced with these values)"
api POST /account "{\"id\": \"demo\", \"host\": \"${SMTP_HOST:-127.0.0.1}\",
                    \"port\": ${SMTP_PORT:-2525}}"

echo "== 2. a message with a small CSV attached (base64, as JSON carries bytes)"
CSV=$(printf 'order,amount\n42,19.90\n' | base64 | tr -d '\n')
api POST /commands/add-messages "{\"messages\": [{
      \"id\": \"$ID\", \"account_id\": \"demo\",
      \"from\": \"Demo <demo@example.com>\", \"to\": \"${TO:-you@example.org}\",
      \"subject\": \"Your order\", \"body\": \"The order is attached.\",
      \"attachments\": [{\"filename\": \"order.csv\", \"content\": \"$CSV\"}]}]}"

echo "== 3. the service: counts per status, dispatchers and reporter alive"
api GET /status

echo "== 4. the delivery record, once the message is sent or has failed for good"
for _ in $(seq 1 50); do
    RECORD=$(api GET "/messages/$ID")
    case $RECORD in
        *'"status":"sent"'* | *'"status":"error"'*) break ;;
    esac
    sleep 0.2
done
echo "$RECORD"
case $RECORD in *'"status":"sent"'*) echo "== sent" ;; *) echo "== not sent"; exit 1 ;; esac
