#!/usr/bin/env bash
# `make run`'s demo (started in the background by run.sh once migrations are applied): wait for
# the service, create a demo token, publish realistic demo events through Kafka with
# `course-audit produce`, wait until the API shows them, then print curl lines to try and the
# viewer's URL.
set -euo pipefail
cd "$(dirname "$0")/../.."

port=${AUDIT_HTTP_PORT:-8080}
base="http://localhost:${port}"
viewer="http://127.0.0.1:${port}/viewer/"
py=.venv/bin/python
cli=.venv/bin/course-audit
work=$(mktemp -d "${TMPDIR:-/tmp}/course-audit-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

say() { printf '[demo] %s\n' "$*" >&2; }

# 1. The service answers and is ready (database reachable, migrations applied, subscribed).
deadline=$((SECONDS + 180))
until curl -fsS -o /dev/null "$base/health/ready" 2>/dev/null; do
  if ((SECONDS > deadline)); then
    say "the service did not become ready on $base within 180 s; see its log above"
    exit 1
  fi
  sleep 0.5
done

# 2. A token for both demo root accounts (printed alone on stdout by the CLI).
token=$("$cli" token create --name "demo $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --root-account 1 --root-account 2 2>/dev/null)

# 3. Demo events: four courses in two accounts (100 in root account 1, 101 in root account 2),
#    the realistic mix of course_audit.produce.sample, over the last few hours. A fresh seed per run so
#    that a second `make run` adds new events instead of repeating ids.
"$py" - "$work/events.jsonl" <<'EOF'
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson

from course_audit.produce.sample import MIX, World, sample_event

world = World.build(seed=int(time.time()), courses=4, accounts=2, roots=2, users=5)
rng = world.rng
base_names = {cid: course["name"] for cid, course in world.courses.items()}
types, weights = zip(*MIX.items())


def event(event_type, at, course_id):
    # sample_event appends a term to the name at each update; start from the plain name so
    # that a demo rename reads "Art 200" -> "Art 200 (Fall)".
    world.courses[course_id]["name"] = base_names[course_id]
    return sample_event(world, event_type, at, course_id=course_id)


at = datetime.now(UTC) - timedelta(hours=3)
events = []
for _ in range(160):
    at += timedelta(milliseconds=rng.randint(0, 120_000))
    events.append(event(rng.choices(types, weights)[0], at, rng.choice(list(world.courses))))
# Course 1000 gets a burst of its own so that its history spans several pages.
burst = datetime.now(UTC) - timedelta(minutes=5)
for i in range(12):
    kind = ("updated", "published", "updated", "concluded")[i % 4]
    events.append(event(kind, burst + timedelta(seconds=10 * i), 1000))
with open(sys.argv[1], "wb") as out:
    for event in events:
        out.write(orjson.dumps(event) + b"\n")
EOF
say "publishing $(wc -l <"$work/events.jsonl") demo events to Kafka"
"$cli" produce "$work/events.jsonl" >&2

# 4. Wait until the newest event (course 1000's last) is visible through the API.
newest=$(tail -n 1 "$work/events.jsonl" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["event_id"])')
deadline=$((SECONDS + 120))
until curl -fsS -H "Authorization: Bearer $token" \
  "$base/api/v1/audit/course/courses/1000?per_page=1" 2>/dev/null | grep -q "$newest"; do
  if ((SECONDS > deadline)); then
    say "the demo events did not show up within 120 s"
    exit 1
  fi
  sleep 0.5
done

# 5. The real next-page URL, from the Link header of a first page.
next_url=$(curl -fsS -o /dev/null -D - -H "Authorization: Bearer $token" \
  "$base/api/v1/audit/course/courses/1000?per_page=5" |
  "$py" -c '
import re, sys
for line in sys.stdin:
    if line.lower().startswith("link:"):
        found = dict((rel, url) for url, rel in re.findall(r"<([^>]*)>; rel=\"(\w+)\"", line))
        print(found.get("next", ""))
')

# An hour ago, as an example of a date-time filter.
since=$("$py" -c 'from datetime import UTC, datetime, timedelta
print((datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))')

cat <<EOF

================================================================================
 course-audit is running on $base with demo data.

 Demo token (root accounts 1 and 2; create more with \`course-audit token create\`):
   export TOKEN=$token

 One course's events, newest first (numeric id, or sis_course_id:...):
   curl -s -H "Authorization: Bearer \$TOKEN" "$base/api/v1/audit/course/courses/1000?per_page=5"
   curl -s -H "Authorization: Bearer \$TOKEN" "$base/api/v1/audit/course/courses/sis_course_id:SIS-1001"

 The second page of the first request (the "next" URL of its Link header):
   curl -s -H "Authorization: Bearer \$TOKEN" "$next_url"

 See the Link header itself:
   curl -s -D - -o /dev/null -H "Authorization: Bearer \$TOKEN" "$base/api/v1/audit/course/courses/1000?per_page=5"

 Events of the courses directly in account 100 (root account 1) and 101 (root account 2):
   curl -s -H "Authorization: Bearer \$TOKEN" "$base/api/v1/audit/course/accounts/100?start_time=$since"
   curl -s -H "Authorization: Bearer \$TOKEN" "$base/api/v1/audit/course/accounts/101"

 The course-activity viewer (paste the token; try course 1000, or account 100):
   $viewer

 The API description: curl -s $base/openapi.json        Ctrl-C stops everything.
================================================================================
EOF
