"""The API's OpenAPI document (streams/static/openapi.yaml, served at GET /v1/openapi.yaml):
valid OpenAPI 3.1, listing exactly the member-, till- and callback-facing routes the service
registers (so a new route there fails here until it is documented), every operation naming
its security, and every scheme it names defined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.readers import read_from_filename

DOCUMENT = Path(__file__).resolve().parents[2] / "streams" / "static" / "openapi.yaml"

# What the document covers: every /v1/ route but the operators' API and the console's login
# (their access is the operators' permission table, tests/unit/test_operators.py).
COVERED_PREFIX = "/v1/"
NOT_COVERED = ("/v1/admin/", "/v1/console/")

# Operations that declare no credential (`security: []`), each for a reason: the document
# itself is public; Alipay's signature is a parameter of the form body, which no OpenAPI
# security scheme can describe (the operation's description says how it is checked).
UNSECURED = {("GET", "/v1/openapi.yaml"), ("POST", "/v1/callbacks/alipay")}

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def covered(path: str) -> bool:
    return path.startswith(COVERED_PREFIX) and not path.startswith(NOT_COVERED)


def app_routes() -> set[tuple[str, str]]:
    """(method, route) of every covered view the service registers."""
    import streams.http  # noqa: F401  (registers every view)
    from streams.app import app

    out = set()
    for resource in app.web.web_app.router.resources():  # type: ignore[attr-defined]
        if covered(resource.canonical):
            out |= {(route.method, resource.canonical) for route in resource if route.method != "HEAD"}
    return out


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc, _uri = read_from_filename(str(DOCUMENT))
    return dict(doc)


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, item in spec["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_the_document_lists_exactly_the_covered_routes(spec: dict[str, Any]) -> None:
    routes = app_routes()
    documented = set(operations(spec))
    assert len(routes) >= 30
    undocumented = sorted(routes - documented)
    assert not undocumented, "routes of the service missing from streams/static/openapi.yaml:\n" + "\n".join(
        f"  {m} {p}" for m, p in undocumented)
    extra = sorted(documented - routes)
    assert not extra, "operations in streams/static/openapi.yaml the service does not register:\n" + "\n".join(
        f"  {m} {p}" for m, p in extra)
    assert all(covered(p) for _m, p in documented), "the document covers only /v1/, not /v1/admin or /v1/console"


def test_every_operation_names_its_security_and_every_scheme_is_defined(spec: dict[str, Any]) -> None:
    schemes = set(spec["components"]["securitySchemes"])
    used: set[str] = set()
    for (method, path), op in operations(spec).items():
        assert "security" in op, f"{method} {path}: no `security` (list its credentials, or [] if it is public)"
        if op["security"] == []:
            assert (method, path) in UNSECURED, f"{method} {path}: `security: []` but it is not known to be public"
            continue
        for requirement in op["security"]:
            assert requirement, f"{method} {path}: an empty requirement ({{}}) lets anyone in"
            used |= set(requirement)
    assert used - schemes == set(), f"security schemes used but not defined: {sorted(used - schemes)}"
    assert schemes - used == set(), f"security schemes defined but used by no operation: {sorted(schemes - used)}"


def test_every_operation_has_a_summary_and_an_answer_that_succeeds(spec: dict[str, Any]) -> None:
    for (method, path), op in operations(spec).items():
        assert op.get("summary"), f"{method} {path}: no summary"
        assert any(code.startswith("2") for code in op["responses"]), f"{method} {path}: no 2xx answer"


async def test_the_service_serves_the_document_as_shipped() -> None:
    from streams.app import app
    from streams.http.openapi import DOCUMENT as served
    from streams.http.openapi import OpenAPIDocument

    response = await OpenAPIDocument(app, app.web).get(None)  # type: ignore[arg-type]
    assert response.status == 200
    assert response.content_type == "application/yaml"
    assert response.body == served == DOCUMENT.read_bytes()
