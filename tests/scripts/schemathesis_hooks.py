"""Schemathesis hooks for Lily's API description.

Bulk uploads (`POST /v1/tenants/{tenant}/bulk/loads/{load_id}`) take NDJSON,
a media type schemathesis has no serializer for: generated values are sent
as their text, one document per line, so the fuzzer reaches the handler.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return "".join(json.dumps(v) + "\n" for v in value).encode("utf-8")
    return (json.dumps(value) + "\n").encode("utf-8")
