"""The OpenAPI contract: complete, valid, and the document the app actually serves.

No stack needed: the app runs in-process (``chalice.test.Client`` or a hand-made
API Gateway proxy event), so these run in the unit-test time budget.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import BaseModel

from app import app
from chalicelib import openapi, swagger
from chalicelib.errors import (
    AccountNotEmptyError,
    BackendUnavailableError,
    CounterError,
    FieldError,
    MalformedRequestError,
    NotFoundError,
    ServiceLimitReachedError,
    ValidationFailedError,
)
from chalicelib.problems import PROBLEM_JSON, problem_for
from chalicelib.schemas import ProblemOut

REPO_ROOT = Path(__file__).resolve().parents[2]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.document()


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def validator_for(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator whose ``#/components/...`` refs resolve in ``document``."""
    return Draft202012Validator({**schema, "components": document["components"]})


def api_gateway_event(path: str, resource: str, stage: str = "api") -> dict[str, Any]:
    """What API Gateway's Lambda proxy integration sends for ``GET https://host/<stage><path>``."""
    return {
        "resource": resource,
        "path": path,
        "httpMethod": "GET",
        "headers": {"accept": "text/html", "host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": "GET",
            "path": f"/{stage}{path}",
            "stage": stage,
            "identity": {"sourceIp": "203.0.113.7"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


# -- completeness: the document and the route table cannot drift ----------------------


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    document: dict[str, Any],
) -> None:
    # GIVEN the app's route table WHEN compared with the document's operations
    routed = {(method, path) for path, methods in app.routes.items() for method in methods}
    # THEN both list exactly the same (method, path) pairs
    assert documented_operations(document) == routed


def test_operation_ids_are_unique_and_every_operation_has_a_summary_and_a_tag(
    document: dict[str, Any],
) -> None:
    operations = [
        item[method]
        for item in document["paths"].values()
        for method in item
        if method in HTTP_METHODS
    ]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids))
    assert all(operation["summary"] and operation["tags"] for operation in operations)


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_path_parameters_match_the_route_templates(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method in HTTP_METHODS & set(item):
            declared = {p["name"] for p in item[method].get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


# -- what each operation declares ---------------------------------------------------


def test_body_routes_declare_malformed_json_wrong_media_type_and_validation_problems(
    document: dict[str, Any],
) -> None:
    for path, item in document["paths"].items():
        for method in HTTP_METHODS & set(item):
            operation = item[method]
            if "requestBody" in operation:
                assert {"400", "415", "422"} <= set(operation["responses"]), (method, path)


def test_routes_that_use_the_database_declare_503_with_retry_after(
    document: dict[str, Any],
) -> None:
    backend = [op for op in openapi.OPERATIONS if op.backend]
    assert len(backend) == 12
    for operation in backend:
        response = document["paths"][operation.path][operation.method.lower()]["responses"]["503"]
        assert response["headers"]["Retry-After"]["required"] is True


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("POST", "/services", {"200", "400", "404", "409", "415", "422", "503"}),
        ("DELETE", "/accounts/{account_id}", {"200", "404", "409", "422", "503"}),
        ("GET", "/accounts", {"200", "422", "503"}),
        ("GET", "/services/{service_id}", {"200", "404", "422", "503"}),
        ("GET", "/health", {"200"}),
        ("GET", "/swagger/{asset}", {"200", "404"}),
    ],
)
def test_operations_list_their_statuses(
    document: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert set(document["paths"][path][method.lower()]["responses"]) == statuses


def test_every_example_conforms_to_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    for item in document["paths"].values():
        for method in HTTP_METHODS & set(item):
            operation = item[method]
            bodies = [operation.get("requestBody", {}).get("content", {})]
            bodies += [response.get("content", {}) for response in operation["responses"].values()]
            for content in bodies:
                for media in content.values():
                    examples = [e["value"] for e in media.get("examples", {}).values()]
                    examples += [media["example"]] if "example" in media else []
                    for example in examples:
                        validator_for(document, media["schema"]).validate(example)
                        checked += 1
            for parameter in operation.get("parameters", []):
                if "example" in parameter:
                    validator_for(document, parameter["schema"]).validate(parameter["example"])
    assert checked > 60


@pytest.mark.parametrize(
    "error",
    [
        MalformedRequestError("the request body is not valid JSON"),
        ValidationFailedError([FieldError("body.name", "Field required")]),
        NotFoundError("service", "x"),
        ServiceLimitReachedError("a", 3),
        AccountNotEmptyError("a"),
        BackendUnavailableError("PutItem", retry_after_seconds=2),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_domain_problem_body_is_a_problem(error: CounterError) -> None:
    body = problem_for(error).body()
    assert ProblemOut.model_validate(body).model_dump(exclude_none=True) == body


def test_query_parameters_never_document_null(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/accounts"]["get"]["parameters"]
    cursor = next(p for p in parameters if p["name"] == "cursor")
    assert cursor["required"] is False
    assert cursor["schema"]["type"] == "string"
    assert "anyOf" not in cursor["schema"]


def test_a_malformed_operation_is_refused_when_the_table_is_built() -> None:
    class Thing(BaseModel):
        name: str = "x"

    class Other(BaseModel):
        name: str = "y"

    with pytest.raises(ValueError, match="path parameters"):
        openapi.Operation("GET", "/things/{thing_id}", "getThing", "Get", "t", response=Thing)
    with pytest.raises(TypeError, match="example"):
        openapi.Operation(
            "GET", "/things", "listThings", "List", "t", response=Thing, response_example=Other()
        )


# -- serving ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/swagger/json"])
def test_the_document_is_served_as_json_at_both_addresses(client: Client, path: str) -> None:
    response = client.http.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == openapi.document("/")


def test_the_page_loads_its_assets_and_its_document_from_where_it_is_served(
    client: Client,
) -> None:
    response = client.http.get("/swagger")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assets = re.findall(r'(?:href|src)="/swagger/([^"]+)"', page)
    assert sorted(assets) == sorted(swagger.ASSETS)
    assert 'data-spec-url="/swagger/json"' in page
    for name in assets:
        asset = client.http.get(f"/swagger/{name}")
        assert asset.status_code == 200
        assert asset.headers["Content-Type"] == swagger.ASSETS[name]
        assert asset.headers["Cache-Control"] == "public, max-age=86400"
        assert len(asset.body) > 100


def test_an_unknown_asset_is_a_404_problem(client: Client) -> None:
    response = client.http.get("/swagger/swagger-editor.js")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == PROBLEM_JSON
    assert json.loads(response.body)["type"].endswith("/asset-not-found")


def test_behind_an_api_gateway_stage_the_page_and_document_keep_the_stage_prefix() -> None:
    # GIVEN requests as API Gateway forwards them for the `api` stage
    page = app(api_gateway_event("/swagger", "/swagger"), context=None)
    document = app(api_gateway_event("/openapi.json", "/openapi.json"), context=None)
    # THEN the page loads everything under /api/swagger, and Try-it-out calls /api/...
    assert page["statusCode"] == 200
    assert 'href="/api/swagger/swagger-ui.css"' in page["body"]
    assert 'src="/api/swagger/swagger-ui-bundle.js"' in page["body"]
    assert 'data-spec-url="/api/swagger/json"' in page["body"]
    assert json.loads(document["body"])["servers"] == [{"url": "/api"}]


@pytest.mark.parametrize(
    ("request_path", "route", "mount"),
    [
        ("/swagger", "/swagger", ""),
        ("/swagger/", "/swagger", ""),
        ("/api/swagger", "/swagger", "/api"),
        ("/api/swagger/", "/swagger", "/api"),
        ("/v1/api/openapi.json", "/openapi.json", "/v1/api"),
        (None, "/swagger", ""),
    ],
)
def test_mount_path_is_what_precedes_the_route(
    request_path: str | None, route: str, mount: str
) -> None:
    assert swagger.mount_path(request_path, route) == mount


def test_the_page_escapes_the_mount_it_is_given() -> None:
    body = swagger.page('/x"><script>').body
    assert "<script>/" not in body
    assert "&quot;&gt;&lt;script&gt;" in body


@pytest.mark.parametrize(
    ("method", "headers", "status", "title"),
    [
        ("PATCH", {}, 405, "MethodNotAllowedError"),
        ("POST", {"Content-Type": "text/plain"}, 415, "UnsupportedMediaType"),
    ],
)
def test_framework_errors_are_problems_too(
    client: Client, method: str, headers: dict[str, str], status: int, title: str
) -> None:
    response = client.http.request(method, "/accounts", headers=headers, body=b"x")
    assert response.status_code == status
    assert response.headers["Content-Type"] == PROBLEM_JSON
    body = ProblemOut.model_validate_json(response.body)
    assert (body.status, body.title, body.type) == (status, title, "about:blank")


def test_the_documented_415_example_is_what_the_app_answers(
    client: Client, document: dict[str, Any]
) -> None:
    response = client.http.post("/accounts", headers={"Content-Type": "text/plain"}, body=b"x")
    media = document["paths"]["/accounts"]["post"]["responses"]["415"]["content"][PROBLEM_JSON]
    assert json.loads(response.body) == media["examples"]["not-json"]["value"]


# -- the vendored Swagger UI is the pinned package's --------------------------------


def test_vendored_swagger_ui_files_are_the_pinned_packages() -> None:
    spec = importlib.util.spec_from_file_location(
        "vendor_swagger_ui", REPO_ROOT / "scripts" / "vendor_swagger_ui.py"
    )
    assert spec is not None
    assert spec.loader is not None
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    source = vendor.package_static_dir()
    for name in vendor.VENDORED_FILES:
        vendored = swagger.STATIC_DIR / vendor.vendored_name(name)
        assert vendored.read_bytes() == (source / name).read_bytes(), (
            f"{vendored} differs from swagger-ui-py's: run scripts/vendor_swagger_ui.py"
        )


def test_links_name_existing_operations_and_their_parameters(document: dict[str, Any]) -> None:
    operations = {
        item[method]["operationId"]: item[method]
        for item in document["paths"].values()
        for method in HTTP_METHODS & set(item)
    }
    links = [
        link
        for operation in operations.values()
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(links) == 10
    for link in links:
        target = operations[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", [])}
        assert set(link.get("parameters", {})) <= names, link
        if "requestBody" in link:
            assert "requestBody" in target, link


def test_the_operations_table_in_docs_api_md_matches_the_document(
    document: dict[str, Any],
) -> None:
    # GIVEN the prose contract's table rows: | `METHOD /path` | id | summary | statuses |
    rows = re.findall(
        r"^\| `(\w+) (\S+)` \| (\w+) \| [^|]+ \| ([\d, ]+) \|$",
        (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    documented = {
        (method, path): (
            item[method.lower()]["operationId"],
            set(item[method.lower()]["responses"]),
        )
        for path, item in document["paths"].items()
        for method in (m.upper() for m in HTTP_METHODS & set(item))
    }
    # THEN they list the same operations, ids and statuses
    in_prose = {
        (method, path): (operation_id, {s.strip() for s in statuses.split(",")})
        for method, path, operation_id, statuses in rows
    }
    assert in_prose == documented
