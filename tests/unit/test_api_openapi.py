"""The OpenAPI 3.1 document is valid and describes what the API does."""

from __future__ import annotations

from datetime import UTC

import orjson
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from course_audit.api.openapi import openapi_document
from course_audit.api.render import render_document
from course_audit.store.queries import Linked, Refs


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document("https://audit.example.edu")
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "https://audit.example.edu"}]
    validate(orjson.loads(orjson.dumps(document)))


def test_document_lists_both_endpoints_and_the_operational_routes() -> None:
    paths = openapi_document()["paths"]
    assert set(paths) == {
        "/api/v1/audit/course/courses/{course_id}",
        "/api/v1/audit/course/accounts/{account_id}",
        "/api/v1/audit/course/courses/{course_id}/stream",
        "/api/v1/audit/course/accounts/{account_id}/stream",
        "/api/v1/audit/course/courses/{course_id}/export",
        "/api/v1/audit/course/accounts/{account_id}/export",
        "/openapi.json",
        "/health/live",
        "/health/ready",
        "/metrics",
    }
    course = paths["/api/v1/audit/course/courses/{course_id}"]["get"]
    names = {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in course["parameters"]}
    assert names == {
        "course_id",
        "start_time",
        "end_time",
        "event_type",
        "user_id",
        "event_source",
        "per_page",
        "page",
        "access_token",
    }
    assert set(course["responses"]) == {"200", "400", "401", "404", "405", "500", "503"}
    for target, path_parameter in (("courses", "course_id"), ("accounts", "account_id")):
        export = paths[f"/api/v1/audit/course/{target}/{{{path_parameter}}}/export"]["get"]
        names = {p.get("name") or p["$ref"].rsplit("/", 1)[1] for p in export["parameters"]}
        assert names == {path_parameter, "start_time", "end_time", "format", "after_id",
                         "event_type", "user_id", "event_source", "access_token"}  # fmt: skip
        assert set(export["responses"]) == {"200", "400", "401", "404", "405", "500", "503"}
        assert export["responses"]["200"] == {"$ref": "#/components/responses/Export"}
    export_ok = openapi_document()["components"]["responses"]["Export"]
    assert set(export_ok["content"]) == {"application/x-ndjson", "text/csv"}
    assert export_ok["headers"]["Content-Disposition"]["required"] is True


def test_both_endpoints_document_the_filters() -> None:
    document = openapi_document()
    for path in (
        "/api/v1/audit/course/courses/{course_id}",
        "/api/v1/audit/course/accounts/{account_id}",
        "/api/v1/audit/course/courses/{course_id}/stream",
        "/api/v1/audit/course/accounts/{account_id}/stream",
    ):
        refs = {p.get("$ref") for p in document["paths"][path]["get"]["parameters"]}
        for name in ("event_type", "user_id", "event_source"):
            assert f"#/components/parameters/{name}" in refs, (path, name)
    params = document["components"]["parameters"]
    event_type = params["event_type"]
    assert event_type["in"] == "query" and event_type["explode"] is True
    # The 13 Canvas course event types, written out here rather than taken from the code.
    assert set(event_type["schema"]["items"]["enum"]) == {
        "created",
        "updated",
        "concluded",
        "unconcluded",
        "published",
        "unpublished",
        "claimed",
        "deleted",
        "restored",
        "copied_from",
        "copied_to",
        "reset_from",
        "reset_to",
    }
    assert event_type["schema"]["maxItems"] == 13
    assert params["user_id"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    assert params["event_source"]["schema"]["maxLength"] == 255


def test_empty_document_matches_its_schema() -> None:
    document = openapi_document()
    registry: Registry = Registry().with_resource(
        "urn:doc", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validator = Draft202012Validator(
        {"$ref": "urn:doc#/components/schemas/CourseAuditDocument"}, registry=registry
    )
    body = render_document([], Linked(), Refs(), "http://h", UTC, utc=True)
    validator.validate(orjson.loads(body))
