"""Checks the gateway's OpenAPI document with a real validator, and real answers against it.

    python3 openapi_check.py SPEC.json SAMPLES.json

SPEC.json: the document the gateway served. It must be valid OpenAPI 3.1
(openapi-spec-validator). SAMPLES.json: [{"method", "path" (as documented), "status",
"body"}, ...], answers the test received; each must be a documented response of its operation
and its body must match the response's schema (JSON Schema 2020-12, formats checked).
Prints "ok" or raises."""
import json
import sys

from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate

spec = json.load(open(sys.argv[1]))
validate(spec)
samples = json.load(open(sys.argv[2]))
for s in samples:
    op = spec["paths"][s["path"]][s["method"].lower()]
    response = op["responses"].get(str(s["status"]))
    assert response is not None, f"{s['method']} {s['path']}: {s['status']} is not documented"
    if s["body"] is None:
        assert "content" not in response, f"{s['method']} {s['path']} {s['status']}: a body is documented"
        continue
    schema = dict(response["content"]["application/json"]["schema"])
    schema["components"] = spec["components"]
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(s["body"])
print("ok", len(samples))
