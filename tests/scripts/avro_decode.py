"""Decodes Avro single-object encoded values with fastavro, independently of
Lily's encoder. Reads {"schemas": {fingerprint_hex: schema_json}, "values":
[hex]} on stdin; prints the decoded records as a JSON list. Fails when a
value lacks the C3 01 marker, names an unknown fingerprint, or when the
fingerprint is not the schema's CRC-64-AVRO (little-endian, as the
specification puts it after the marker)."""

import io
import json
import sys

from fastavro import schemaless_reader
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

request = json.load(sys.stdin)
schemas = {}
for fp, text in request["schemas"].items():
    parsed = parse_schema(json.loads(text))
    # fastavro gives the fingerprint's 8 bytes little-endian, as they
    # follow the marker.
    computed = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    if fp != computed:
        sys.exit(f"schema published as {fp}, its CRC-64-AVRO is {computed}")
    schemas[fp] = parsed

out = []
for value in request["values"]:
    raw = bytes.fromhex(value)
    if raw[:2] != b"\xc3\x01":
        sys.exit(f"no single-object marker: {raw[:2].hex()}")
    fp = raw[2:10].hex()
    if fp not in schemas:
        sys.exit(f"unknown fingerprint {fp}")
    out.append(schemaless_reader(io.BytesIO(raw[10:]), schemas[fp]))

json.dump(out, sys.stdout, default=str)
