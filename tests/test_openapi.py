"""The OpenAPI document: valid 3.1, complete, and true to what the API answers."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from trimail.errors import error_codes
from trimail.http.app import TrimailApp

from .conftest import open_jobs, wait_until

MAIL = {"from": "svc@example.com", "to": "user@example.com", "subject": "Hi", "text": "Hello"}


async def fetch_document(app: TrimailApp) -> dict[str, Any]:
    response = await app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return json.loads(await response.get_data())


def check(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate ``body`` against the schema the document gives for that answer."""
    answer = document["paths"][path][method]["responses"][str(status)]
    schema = answer["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)


async def test_served_document_is_valid_openapi_31(running_app: TrimailApp) -> None:
    """GET /openapi.json passes openapi-spec-validator as OpenAPI 3.1."""
    document = await fetch_document(running_app)
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_every_route_is_documented(running_app: TrimailApp) -> None:
    """Each route of the app, with each method, is a path of the document."""
    document = await fetch_document(running_app)
    for rule in running_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<job_id:job_id>", "{job_id}").replace("<name>", "{name}")
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        assert methods <= set(document["paths"][path]), (path, methods)


async def test_every_error_code_is_documented(running_app: TrimailApp) -> None:
    """The closed set of error codes appears in the document's answers."""
    text = json.dumps(await fetch_document(running_app))
    for code in error_codes():
        assert f'"{code}"' in text, code


async def test_request_fields_carry_their_rules(running_app: TrimailApp) -> None:
    """Every request field is described, with "from" under its JSON name."""
    schema = (await fetch_document(running_app))["components"]["schemas"]["SendRequest"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers",
        "attachments",
    }  # fmt: skip
    assert all(field.get("description") for field in schema["properties"].values())


async def test_answers_match_their_documented_schemas(running_app: TrimailApp) -> None:
    """Real 202, 422, 404, status, health and readiness answers validate against the document."""
    document = await fetch_document(running_app)
    client = running_app.test_client()
    accepted = await client.post("/email/send", json=MAIL)
    check(document, "/email/send", "post", 202, await accepted.get_json())
    invalid = await client.post("/email/send", json={"to": "x"})
    check(document, "/email/send", "post", 422, await invalid.get_json())
    batch = await client.post("/email/batch", json=[MAIL, MAIL])
    check(document, "/email/batch", "post", 202, await batch.get_json())
    job_id = (await accepted.get_json())["id"]
    await wait_until(lambda: open_jobs(running_app) == 0)
    status = await client.get(f"/email/{job_id}")
    check(document, "/email/{job_id}", "get", 200, await status.get_json())
    missing = await client.get(f"/email/{'0' * 32}")
    check(document, "/email/{job_id}", "get", 404, await missing.get_json())
    check(document, "/healthz", "get", 200, await (await client.get("/healthz")).get_json())
    check(document, "/readyz", "get", 200, await (await client.get("/readyz")).get_json())


async def test_docs_page_lists_the_routes(running_app: TrimailApp) -> None:
    """GET /docs is an HTML page naming every route, readable without JavaScript."""
    response = await running_app.test_client().get("/docs")
    assert response.content_type.startswith("text/html")
    page = (await response.get_data()).decode()
    for route in ("POST /email/send", "POST /email/batch", "GET /email/{job_id}", "/metrics"):
        assert route in page
