"""Requests no HTTP client would send, over a bare socket, against `course-audit serve`.

Each case gets the answer docs/api.md#bad-requests lists (a 4xx, or a close for what cannot
be answered; never a 5xx), the process answers `/health/live` after each batch, and no token
reaches the log. The service runs with aiohttp's C parser (the default) and with its
pure-Python parser (AIOHTTP_NO_EXTENSIONS=1), which differ on a few lines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from test_api_outage import through
from test_api_support import create_database, drop_database, with_database

from course_audit.store.tokens import create_token
from raw_http import Answer, exchange
from service_process import ServiceProcess
from tcp_proxy import Proxy

pytestmark = pytest.mark.e2e

#: The environment that picks each parser.
PARSERS = {"c": {}, "python": {"AIOHTTP_NO_EXTENSIONS": "1"}}
API = b"/api/v1/audit/course/courses/1"
LIVE = b"/health/live"
CLOSE = None  # closed without an answer
REFUSED = "bad request refused"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    c: int | None  # the answer with the C parser
    python: int | None  # with the pure-Python parser

    def expected(self, parser: str) -> int | None:
        return self.c if parser == "c" else self.python


def same(name: str, data: bytes, status: int | None) -> Case:
    return Case(name, data, status, status)


def request(line: bytes, headers: bytes = b"", body: bytes = b"", host: bool = True) -> bytes:
    return line + b"\r\n" + (b"Host: x\r\n" if host else b"") + headers + b"\r\n" + body


def batches(token: bytes) -> dict[str, list[Case]]:
    """The cases, in batches; `token` is a real, active token placed where a client might."""
    bearer = b"Authorization: Bearer " + token + b"\r\n"
    q = API + b"?access_token=" + token
    return {
        "request line": [
            same("not HTTP", b"NOT HTTP AT ALL\r\n\r\n", 400),
            # The Python parser waits for a line's end: the header timeout closes the connection.
            Case(
                "binary, no line end (TLS)", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc" * 3, 400, CLOSE
            ),
            same("an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            same("a method with a stray byte", request(b"G@T " + q + b" HTTP/1.1"), 400),
            Case("an unknown method", request(b"BREW " + LIVE + b" HTTP/1.1"), 400, 405),
            Case("a lower-case method", request(b"get " + LIVE + b" HTTP/1.1"), 400, 200),
            Case("HTTP/0.9 (no version)", b"GET " + LIVE + b"\r\n\r\n", 200, 400),
            Case("HTTP/9.9", request(b"GET " + LIVE + b" HTTP/9.9"), 400, 200),
            same("a version that is not one", request(b"GET " + q + b" HTTP/1.x"), 400),
            same("NUL in the target", request(b"GET " + q + b"\x00 HTTP/1.1"), 400),
            same("a control byte in the query", request(b"GET " + q + b"\x01 HTTP/1.1"), 400),
            same("a space in the target", request(b"GET " + q + b" x HTTP/1.1"), 400),
            same("a path that is not UTF-8", request(b"GET " + LIVE + b"\xff HTTP/1.1"), 400),
            same("a query not UTF-8", request(b"GET " + q + b"&page=\xff HTTP/1.1"), 400),
            same(
                "a SIS id not UTF-8",
                request(b"GET " + API[:-1] + b"sis_course_id:\xff HTTP/1.1", bearer),
                400,
            ),
            same(
                "a target over 8190 bytes",
                request(b"GET " + q + b"&x=" + b"a" * 9000 + b" HTTP/1.1"),
                400,
            ),
            same("bare LF line ends", b"GET " + q + b" HTTP/1.1\nHost: x\n\n", 400),
            same("empty lines first", b"\r\n\r\n" + request(b"GET " + LIVE + b" HTTP/1.1"), 200),
            same("OPTIONS *", request(b"OPTIONS * HTTP/1.1"), 404),
            same("CONNECT", request(b"CONNECT x:443 HTTP/1.1"), 404),
        ],
        "headers": [
            same(
                "a space in a header name",
                request(b"GET " + API + b" HTTP/1.1", b"X " + bearer),
                400,
            ),
            same(
                "a header name not UTF-8",
                request(b"GET " + LIVE + b" HTTP/1.1", b"X-\xff: 1\r\n"),
                400,
            ),
            same(
                "NUL in a header value",
                request(b"GET " + API + b" HTTP/1.1", bearer[:-2] + b"\x00\r\n"),
                400,
            ),
            same(
                "a control byte in a value",
                request(b"GET " + API + b" HTTP/1.1", bearer[:-2] + b"\x01\r\n"),
                400,
            ),
            same(
                "a value not UTF-8 (liveness)",
                request(b"GET " + LIVE + b" HTTP/1.1", b"X-A: \xff\xfe\r\n"),
                200,
            ),
            same(
                "a value not UTF-8 (metrics)",
                request(b"GET /metrics HTTP/1.1", b"X-A: \xff\r\n"),
                200,
            ),
            same(
                "a Host not UTF-8 (OpenAPI)",
                b"GET /openapi.json HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
                200,
            ),
            same(
                "a value not UTF-8 (API)",
                request(b"GET " + API + b" HTTP/1.1", bearer + b"X-A: \xff\r\n"),
                401,
            ),
            same(
                "an Authorization not UTF-8",
                request(b"GET " + API + b" HTTP/1.1", bearer[:22] + b"\xff" + bearer[22:]),
                401,
            ),
            same(
                "a header over 8190 bytes",
                request(b"GET " + API + b" HTTP/1.1", bearer[:-2] + b"a" * 9000 + b"\r\n"),
                400,
            ),
            same(
                "200 headers",
                request(
                    b"GET " + LIVE + b" HTTP/1.1", b"".join(b"X-%d: 1\r\n" % i for i in range(200))
                ),
                400,
            ),
            same(
                "a header without a colon",
                request(b"GET " + API + b" HTTP/1.1", b"Authorization Bearer " + token + b"\r\n"),
                400,
            ),
            same(
                "a folded header",
                request(
                    b"GET " + API + b" HTTP/1.1", b"Authorization: Bearer\r\n " + token + b"\r\n"
                ),
                400,
            ),
            same(
                "a space before the colon",
                request(b"GET " + API + b" HTTP/1.1", b"Authorization : Bearer " + token + b"\r\n"),
                400,
            ),
            same(
                "two Host headers",
                request(b"GET " + API + b" HTTP/1.1", b"Host: y\r\n" + bearer),
                400,
            ),
            same("HTTP/1.1 without Host", request(b"GET " + q + b" HTTP/1.1", host=False), 400),
            same(
                "a 5000-byte Host (API)",
                b"GET " + API + b" HTTP/1.1\r\nHost: " + b"a" * 5000 + b"\r\n" + bearer + b"\r\n",
                400,
            ),
            same(
                "a 5000-byte Host (OpenAPI)",
                b"GET /openapi.json HTTP/1.1\r\nHost: " + b"a" * 5000 + b"\r\n\r\n",
                200,
            ),
            same(
                "a Host with '>, <'",
                b"GET " + API + b" HTTP/1.1\r\nHost: x>, <y\r\n" + bearer + b"\r\n",
                400,
            ),
        ],
        "framing": [
            same(
                "two Content-Lengths",
                request(
                    b"POST " + q + b" HTTP/1.1",
                    b"Content-Length: 1\r\nContent-Length: 2\r\n",
                    b"ab",
                ),
                400,
            ),
            same(
                "the same Content-Length twice",
                request(
                    b"POST " + LIVE + b" HTTP/1.1",
                    b"Content-Length: 1\r\nContent-Length: 1\r\n",
                    b"a",
                ),
                400,
            ),
            same(
                "a Content-Length not a number",
                request(b"POST " + LIVE + b" HTTP/1.1", b"Content-Length: abc\r\n"),
                400,
            ),
            same(
                "a negative Content-Length",
                request(b"POST " + LIVE + b" HTTP/1.1", b"Content-Length: -1\r\n"),
                400,
            ),
            Case(
                "a 23-digit Content-Length",
                request(b"POST " + LIVE + b" HTTP/1.1", b"Content-Length: " + b"9" * 23 + b"\r\n"),
                400,
                405,
            ),
            same(
                "Content-Length and chunked",
                request(
                    b"POST " + LIVE + b" HTTP/1.1",
                    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                    b"0\r\n\r\n",
                ),
                400,
            ),
            same(
                "an unknown Transfer-Encoding",
                request(b"POST " + LIVE + b" HTTP/1.1", b"Transfer-Encoding: gzip\r\n"),
                400,
            ),
            same(
                "a chunk size not hex",
                request(
                    b"POST " + q + b" HTTP/1.1", b"Transfer-Encoding: chunked\r\n", token + b"\r\n"
                ),
                400,
            ),
            same(
                "a body shorter than announced",
                request(b"POST " + LIVE + b" HTTP/1.1", b"Content-Length: 100\r\n", b"abc"),
                405,
            ),
        ],
        "partial": [
            same("nothing at all", b"", CLOSE),
            same("half a request line", b"GET " + q[:20], CLOSE),
            same("a head without its empty line", request(b"GET " + q + b" HTTP/1.1")[:-2], CLOSE),
        ],
    }


@dataclass
class Served:
    service: ServiceProcess
    token: str
    parser: str


@pytest.fixture(scope="module", params=sorted(PARSERS))
async def served(
    request: pytest.FixtureRequest,
    server_url: str,
    migrated_template: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Served]:
    """`course-audit serve` with a short header timeout, one parser, and a real token."""
    parser: str = request.param
    name = await create_database(server_url, migrated_template)
    db_url = with_database(server_url, name)
    conn = await asyncpg.connect(db_url)
    try:
        token = (await create_token(conn, "hygiene", [1])).token
    finally:
        await conn.close()
    env = {"AUDIT_DATABASE_URL": db_url, "AUDIT_HTTP_HEADER_TIMEOUT_S": "2", **PARSERS[parser]}
    log = tmp_path_factory.mktemp(f"hygiene-{parser}") / "serve.log"
    service = ServiceProcess("serve", env, log)
    try:
        service.start()
        await service.wait_ready()
        yield Served(service, token, parser)
    finally:
        service.stop()
        await drop_database(server_url, name)


async def live(service: ServiceProcess) -> None:
    assert service.proc is not None and service.proc.poll() is None, service.log_text()[-4000:]
    answer = await exchange(service.port, request(b"GET " + LIVE + b" HTTP/1.1"))
    assert answer.status == 200, answer


def assert_json_error(case: str, answer: Answer) -> None:
    assert answer.header("Content-Type") == "application/json; charset=utf-8", (case, answer)
    assert answer.header("Cache-Control") == "no-store", (case, answer)
    body = orjson.loads(answer.body)
    assert isinstance(body["errors"][0]["message"], str), (case, body)


async def test_bad_requests_get_their_documented_answers(served: Served) -> None:
    port, token = served.service.port, served.token.encode()
    for batch, cases in batches(token).items():
        answers = await asyncio.gather(*(exchange(port, case.data) for case in cases))
        got = {case.name: answer.status for case, answer in zip(cases, answers, strict=True)}
        want = {case.name: case.expected(served.parser) for case in cases}
        assert got == want, f"{batch} ({served.parser} parser)"
        for case, answer in zip(cases, answers, strict=True):
            if answer.status is not None and answer.status >= 400:
                assert_json_error(case.name, answer)
        await live(served.service)
    log = served.service.log_text()
    assert served.token not in log
    assert "Traceback" not in log and '"level":"error"' not in log


async def test_an_unreadable_header_on_the_api_is_401_without_a_traceback(served: Served) -> None:
    bearer = b"Authorization: Bearer " + served.token.encode()
    for headers in (bearer + b"\r\nX-Forwarded-For: \xc3\x28\r\n", bearer + b"\xfe\r\n"):
        answer = await exchange(served.service.port, request(b"GET " + API + b" HTTP/1.1", headers))
        assert answer.status == 401, answer
        assert orjson.loads(answer.body) == {
            "errors": [{"message": "A request header is not valid UTF-8."}]
        }
        assert answer.header("WWW-Authenticate") == (
            'Bearer realm="course-audit", error="invalid_request"'
        )
    # The same token in a readable header is accepted (404: course 1 is unknown here).
    answer = await exchange(
        served.service.port, request(b"GET " + API + b" HTTP/1.1", bearer + b"\r\n")
    )
    assert answer.status == 404, answer
    assert "unexpected error" not in served.service.log_text()


async def test_protocol_errors_are_logged_in_one_line_without_the_request(served: Served) -> None:
    token = served.token.encode()
    q = API + b"?access_token=" + token
    bad = [
        request(b"GET " + q + b"&x=" + b"a" * 9000 + b" HTTP/1.1"),  # over the line limit
        request(b"GET " + q + b"\x01 HTTP/1.1"),  # a stray byte
        request(b"GET " + q + b"\x00 HTTP/1.1"),
        request(b"GET " + q + b" HTTP/1.x"),
        request(b"G@T " + q + b" HTTP/1.1"),
        request(b"GET " + q + b" HTTP/1.1", b"Authorization: Bearer " + token + b"\x7f\r\n"),
        request(
            b"GET " + API + b" HTTP/1.1", b"Authorization: Bearer " + token + b"a" * 9000 + b"\r\n"
        ),
        request(b"GET " + API + b" HTTP/1.1", b"Bearer " + token + b": x\r\n"),
        request(
            b"GET " + API + b" HTTP/1.1",
            b"X-A: 1\r\nContent-Length: 1\r\nContent-Length: " + token + b"\r\n",
        ),
    ]
    before = len(served.service.log_lines())
    for data in bad:
        assert (await exchange(served.service.port, data)).status == 400, data[:100]
    lines = await served.service.wait_log(REFUSED, 30, count=len(bad), after=before)
    assert len(lines) == len(bad)
    for line in lines:
        entry = json.loads(line)
        assert set(entry) == {"ts", "level", "logger", "msg", "error", "status", "peer"}, entry
        assert (entry["level"], entry["msg"], entry["status"], entry["peer"]) == (
            "info",
            REFUSED,
            400,
            "127.0.0.1",
        )
        assert entry["error"] in {
            "BadHttpMessage",
            "BadHttpMethod",
            "BadStatusLine",
            "InvalidHeader",
            "InvalidURLError",
            "LineTooLong",
        }, entry
    log = served.service.log_text()
    assert served.token not in log and "access_token" not in log
    await live(served.service)


@pytest.mark.parametrize("parser", sorted(PARSERS))
async def test_what_can_be_refused_without_the_database_is(
    parser: str, server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    """401 (not 503) while the database is unreachable proves no connection was needed."""
    name = await create_database(server_url, migrated_template)
    db_url = with_database(server_url, name)
    conn = await asyncpg.connect(db_url)
    try:
        token = (await create_token(conn, "offline", [1])).token.encode()
    finally:
        await conn.close()
    target = urlsplit(db_url)
    proxy = await Proxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    proxy.cut()  # the database is never reachable for this process
    env = {"AUDIT_DATABASE_URL": through(db_url, proxy.port), **PARSERS[parser]}
    service = ServiceProcess("serve", env, tmp_path / "serve.log")
    try:
        service.start()
        port = await service.listening()
        get = b"GET " + API
        refused = {
            "a token of 42 characters": request(
                get + b" HTTP/1.1", b"Authorization: Bearer " + token[:-1] + b"\r\n"
            ),
            "a token of 44 characters": request(
                get + b" HTTP/1.1", b"Authorization: Bearer " + token + b"A\r\n"
            ),
            "a token with a '.'": request(
                get + b" HTTP/1.1", b"Authorization: Bearer " + token[:-1] + b".\r\n"
            ),
            "a token with '+/='": request(
                get + b" HTTP/1.1", b"Authorization: Bearer " + token[:-3] + b"+/=\r\n"
            ),
            "a parameter token too short": request(get + b"?access_token=abc HTTP/1.1"),
            "a parameter token %-encoded": request(
                get + b"?access_token=%ff" + token[3:] + b" HTTP/1.1"
            ),
            "an Authorization not UTF-8": request(
                get + b" HTTP/1.1", b"Authorization: Bearer \xff" + token[1:] + b"\r\n"
            ),
            "another header not UTF-8": request(
                get + b" HTTP/1.1", b"Authorization: Bearer " + token + b"\r\nX-A: \xff\r\n"
            ),
            "no token": request(get + b" HTTP/1.1"),
        }
        for what, data in refused.items():
            answer = await exchange(port, data)
            assert answer.status == 401, (what, answer)
            assert_json_error(what, answer)
        # A token of the right shape needs the store, which is away: 503.
        shaped = request(get + b" HTTP/1.1", b"Authorization: Bearer " + b"A" * 43 + b"\r\n")
        assert (await exchange(port, shaped)).status == 503
        assert (
            await exchange(port, request(get + b"?access_token=" + token + b" HTTP/1.1"))
        ).status == 503
        assert token.decode() not in service.log_text()
    finally:
        # In a thread: the proxy runs on this loop, and the service's pool goes through it.
        await asyncio.to_thread(service.stop)
        await proxy.close()
        await drop_database(server_url, name)
