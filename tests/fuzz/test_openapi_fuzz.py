"""The fuzz layer: schemathesis over the running service's own /openapi.json.

One `course-audit run` process (real Kafka, real PostgreSQL) holds sixteen events of every
type, produced through Kafka; a token for root account 1 is created in its store. The
`schemathesis` CLI loads the document from the process itself and runs its phases against it:
the document's examples, the coverage phase (boundary and schema-violating values of every
parameter, methods the document does not declare), drawn requests (both valid and invalid per
the document) and stateful sequences. Every response must be what the document describes: no
5xx, a documented status, content type, headers and body schema. It runs once with the token
and once for each way of not having one (none, unknown, revoked, another scheme), where every
answer of the two events endpoints and their exports must be the documented 401.

`make test` runs a short, derandomised pass (AUDIT_FUZZ_EXAMPLES drawn requests per operation,
default 25); `make test-fuzz EXAMPLES=500` a longer, randomised one (docs: README, Development).
Schemathesis writes its caches (.hypothesis, .schemathesis) into the test's temporary directory,
never into the repository.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from course_audit.store.tokens import create_token, revoke_token
from e2e.test_api_support import make_event, produce, recent, stack, wait_stored
from service_process import ServiceProcess
from waits import within

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = int(os.environ.get("AUDIT_FUZZ_EXAMPLES", "25"))
#: Derandomised unless a longer run asks for randomness (AUDIT_FUZZ_RANDOM=1).
RANDOM = os.environ.get("AUDIT_FUZZ_RANDOM", "") == "1"
#: The codec drawn strings (header values included) must fit: latin-1 (the default) also
#: draws header bytes that are not UTF-8; utf-8 does not.
CODEC = os.environ.get("AUDIT_FUZZ_CODEC", "latin-1")
#: Longest a whole schemathesis run may take (the per-test timeout may cut it shorter).
RUN_TIMEOUT_S = 600 + EXAMPLES

COURSES = "/api/v1/audit/course/courses/{course_id}"
ACCOUNTS = "/api/v1/audit/course/accounts/{account_id}"
EVENTS_PATHS = (COURSES, ACCOUNTS)
#: The export routes: the same tokens, ids and statuses; a 200 body is NDJSON or CSV.
EXPORT_PATHS = (COURSES + "/export", ACCOUNTS + "/export")

#: What every response is checked for (schemathesis check names).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    # Schema-violating input gets a 4xx; requests the document does not describe (a missing
    # token, an undeclared method) get the documented answer.
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
]
# Not positive_data_acceptance (schema-valid input gets a 2xx): an impossible date such as
# 2026-02-30, or a bookmark in the right alphabet that the service never issued, is valid per
# any schema the document could give and rightly a 400 (the document says so in words).

# Root account 1: courses 101 and 102 in accounts 11 and 12; root account 2: course 201 in
# account 21, which root 1's token must not see (a 404 like an unknown id).
KNOWN_IDS = {
    "course_id": ["101", "102", "sis_course_id:SIS-101", "sis_course_id:SIS 102", "201"],
    "account_id": ["11", "12", "21"],
}

UNAUTHENTICATED = "user authorization required"
INVALID = "Invalid access token."
#: The answer to any header that is not UTF-8 (the latin-1 codec draws such bytes).
UNDECODABLE = "A request header is not valid UTF-8."
REVOKED = "Revoked access token."


def _course(cid: int, account: int, root: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "name": f"Course {cid}",
        "course_code": f"C-{cid}",
        "sis_course_id": f"SIS-{cid}",
        "workflow_state": "available",
        "enrollment_term_id": 3,
        "is_public": False,
        **fields,
    }


def _user(uid: int, name: str) -> dict[str, Any]:
    return {"id": uid, "name": name, "sis_user_id": f"u{uid}", "login_id": f"user{uid}@x.edu"}


def _page_view(n: int) -> dict[str, Any]:
    return {
        "id": f"5d0c61a2-0000-4000-8000-{n:012d}",
        "url": "https://canvas.example.edu/courses/101/settings",
        "http_method": "put",
        "interaction_seconds": 3.5,
        "user_request": True,
        "remote_ip": "10.1.2.3",
    }


def build_events() -> list[dict[str, Any]]:
    """Every event type, with and without users, page views, SIS batches and related courses."""
    t = recent(2)
    c101, c102 = _course(101, 11, 1), _course(102, 12, 1, sis_course_id="SIS 102")
    c103, c104 = _course(103, 11, 1), _course(104, 12, 1)
    ada, alan = _user(7, "Ada Lovelace"), _user(8, "Alan Turing")

    def at(seconds: float) -> Any:
        return t + timedelta(seconds=seconds)

    return [
        make_event(
            "created",
            at(0),
            dict(c101, workflow_state="claimed"),
            user=ada,
            page_view=_page_view(1),
            source="manual",
            created_source="manual",
            changes={"name": [None, "Course 101"], "workflow_state": [None, "claimed"]},
        ),
        make_event(
            "updated",
            at(1.5),
            c101,
            user=alan,
            page_view=_page_view(2),
            changes={
                "is_public": [False, True],
                "tab_configuration": [[], [1, 2]],
                "storage_quota": [500, 1000],
                "syllabus_body": ["", "y" * 1200],
            },
        ),
        make_event("published", at(2), c101, user=ada, source="sis", sis_batch_id=42),
        make_event("unpublished", at(3), c101),
        make_event("claimed", at(4), c101, user=ada, source="api_in_app"),
        make_event("concluded", at(5), c101, user=ada, page_view=_page_view(3)),
        make_event("unconcluded", at(6), c101, user=ada),
        make_event("copied_from", at(7), c101, user=ada, related=c103),
        make_event("copied_to", at(8), c101, user=alan, related=c104),
        make_event("reset_from", at(9), c101, user=ada, related=_course(202, 21, 2)),
        make_event("reset_to", at(10), c101, related=c104),
        make_event("deleted", at(11), dict(c101, workflow_state="deleted"), user=ada),
        make_event("restored", at(12), c101, user=ada),
        make_event("updated", at(20), c102, user=alan),
        make_event("published", at(21), c102, user=alan),
        make_event("updated", at(30), _course(201, 21, 2)),
    ]


@dataclass
class Target:
    service: ServiceProcess
    tokens: dict[str, str]  # "valid" (root 1) and "revoked"


@pytest.fixture(scope="module")
async def target(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[Target]:
    log_dir: Path = tmp_path_factory.mktemp("fuzz")
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        events = build_events()
        await produce(kafka_bootstrap, s.topic, events)
        await wait_stored(s.db_url, [e["event_id"] for e in events])
        conn = await asyncpg.connect(s.db_url)
        try:
            valid = await create_token(conn, "fuzz", [1])
            revoked = await create_token(conn, "fuzz revoked", [1])
            assert await revoke_token(conn, revoked.info.id)
        finally:
            await conn.close()
        yield Target(s.service, {"valid": valid.token, "revoked": revoked.token})


# ------------------------------------------------------------------ running schemathesis


@dataclass
class Run:
    """What one schemathesis run sent and got, from its NDJSON report."""

    output: str
    #: (path template, method, status) -> responses (status None: no response)
    statuses: collections.Counter[tuple[str, str, int | None]] = field(
        default_factory=collections.Counter
    )
    #: path template -> events in its 200 bodies
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    #: error messages of the 401 bodies
    unauthorized: set[str] = field(default_factory=set)

    def seen(self, path: str) -> set[int | None]:
        """The statuses of every request to `path`, whatever its method."""
        return {status for (p, _, status) in self.statuses if p == path}


def _body(response: dict[str, Any]) -> Any:
    content = response.get("content") or {}
    if "$base64" in content:
        raw = base64.b64decode(content["$base64"])
    else:
        raw = str(content.get("body", "")).encode()
    return json.loads(raw) if raw else None


def _exported(response: dict[str, Any]) -> int:
    """The events of an export's 200 body: its NDJSON lines, or its CSV rows (no event's
    CSV row holds a line break in this data)."""
    content = response.get("content") or {}
    if "$base64" in content:
        raw = base64.b64decode(content["$base64"])
    else:
        raw = str(content.get("body", "")).encode()
    if raw.startswith(b"id,created_at,"):
        return raw.count(b"\r\n") - 1
    return raw.count(b"\n")


def read_report(report_dir: Path, output: str) -> Run:
    run = Run(output)
    reports = list(report_dir.glob("*.ndjson"))
    assert len(reports) == 1, f"one NDJSON report expected, found {reports}\n{output}"
    for line in reports[0].read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            case = recorder["cases"][case_id]["value"]
            path, method = case["path"], case["method"].upper()
            response = interaction.get("response")
            status = None if response is None else response["status_code"]
            run.statuses[(path, method, status)] += 1
            if response is None or path not in EVENTS_PATHS + EXPORT_PATHS:
                continue
            if status == 200 and method == "GET" and path in EXPORT_PATHS:
                run.events[path] += _exported(response)
            elif status == 200 and method == "GET":
                run.events[path] += len(_body(response)["events"])
            elif status == 401:
                run.unauthorized.update(e["message"] for e in _body(response)["errors"])
    return run


async def schemathesis_run(
    service: ServiceProcess, workdir: Path, authorization: str | None, phases: str
) -> Run:
    """Run the schemathesis CLI against `service`; fail with its report if any check failed."""
    args = [
        str(SCHEMATHESIS),
        "run",
        f"{service.base_url}/openapi.json",
        "--phases",
        phases,
        "--checks",
        ",".join(CHECKS),
        "--mode",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--generation-codec",
        CODEC,
        "--workers",
        "1",
        "--request-timeout",
        "30",
        # The live tails never end by themselves: tests/e2e/test_api_stream.py covers them.
        "--exclude-path-regex",
        "/stream$",
        "--no-color",
        "--report",
        "ndjson",
        "--report-dir",
        str(workdir),
    ]
    if authorization is not None:
        args += ["--header", f"Authorization: {authorization}"]
    if RANDOM:
        args += ["--generation-database", "none"]
        if os.environ.get("AUDIT_FUZZ_SEED"):
            args += ["--seed", os.environ["AUDIT_FUZZ_SEED"]]
    else:
        args += ["--generation-deterministic"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
        "AUDIT_FUZZ_IDS": json.dumps(KNOWN_IDS),
    }
    # The working directory is the test's own: schemathesis keeps its caches there.
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await within(proc.communicate(), RUN_TIMEOUT_S, "the schemathesis run")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = out.decode(errors="replace")
    assert proc.returncode == 0, f"schemathesis found failures:\n{output}"
    return read_report(workdir, output)


def assert_no_unexpected_errors(service: ServiceProcess, since: int) -> None:
    """The service logged no unexpected error (the errors middleware's 500) after its first
    `since` log lines (the lines of this test's run: an earlier test's are its own failure)."""
    lines = service.log_lines()[since:]
    crashes = [line for line in lines if '"msg":"unexpected error"' in line]
    assert not crashes, "\n".join(crashes[:3])


# ------------------------------------------------------------------ the runs


async def test_with_a_token_every_response_is_documented(target: Target, tmp_path: Path) -> None:
    logged = len(target.service.log_lines())
    run = await schemathesis_run(
        target.service,
        tmp_path,
        f"Bearer {target.tokens['valid']}",
        "examples,coverage,fuzzing,stateful",
    )
    for path in EVENTS_PATHS + EXPORT_PATHS:
        seen = run.seen(path)
        # Pages (exports) with events, bad parameters, unknown and other tenants' ids, other
        # methods: the fuzzer reached each answer, not only the 404.
        assert {200, 400, 404, 405} <= seen, (path, sorted(run.statuses.items(), key=str))
        assert run.events[path] > 0, f"no 200 of {path} had events\n{run.output}"
        assert None not in seen, f"{path}: a request got no response\n{run.output}"
    assert_no_unexpected_errors(target.service, logged)
    await target.service.wait_ready(10)


#: credentials -> the 401 messages that may answer them (the first one must be seen); a
#: drawn header that is not UTF-8 may answer any of them.
WITHOUT_A_VALID_TOKEN = {
    # No token at all; a drawn `access_token` query parameter is an unknown token.
    "none": [UNAUTHENTICATED, INVALID, UNDECODABLE],
    "unknown": [INVALID, UNDECODABLE],
    "revoked": [REVOKED, UNDECODABLE],
    # Not a bearer token: ignored, as if there were none.
    "basic": [UNAUTHENTICATED, INVALID, UNDECODABLE],
}


@pytest.mark.parametrize("credentials", list(WITHOUT_A_VALID_TOKEN))
async def test_without_a_valid_token_every_answer_is_the_documented_401(
    target: Target, tmp_path: Path, credentials: str
) -> None:
    valid = target.tokens["valid"]
    authorization = {
        "none": None,
        # Shaped like ours, one character changed.
        "unknown": "Bearer " + valid[:-1] + ("A" if valid[-1] != "A" else "B"),
        "revoked": f"Bearer {target.tokens['revoked']}",
        "basic": "Basic Zm9vOmJhcg==",
    }[credentials]
    logged = len(target.service.log_lines())
    # Every answer is a 401 here: the documented examples and the stateful sequences (which
    # follow values from 200 bodies) would add nothing.
    run = await schemathesis_run(target.service, tmp_path, authorization, "coverage,fuzzing")
    for path in EVENTS_PATHS + EXPORT_PATHS:
        seen = run.seen(path)
        # 405 for methods the document does not declare comes before authentication.
        assert 401 in seen and seen <= {401, 405}, (path, sorted(seen, key=str))
    allowed = WITHOUT_A_VALID_TOKEN[credentials]
    assert allowed[0] in run.unauthorized, run.unauthorized
    assert run.unauthorized <= set(allowed), run.unauthorized
    assert_no_unexpected_errors(target.service, logged)
