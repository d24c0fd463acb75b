"""Emits OpenLineage events into Lily with OpenLineage's own Python client
(openlineage-python), over its HTTP transport with an API key.

usage: openlineage_emit.py BASE_URL API_KEY

BASE_URL is the tenant's OpenLineage base URL with its trailing slash
(http://host:port/v1/tenants/acme/openlineage/). A run reads
shop.public.orders (its customer_email tagged PII by the producer) and writes
shop.marts.order_emails with column lineage; then a second client, given the
base URL without its trailing slash (which urljoin cuts back to the tenant),
reports the schema of shop.public.customers in a DatasetEvent.
"""

import sys

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import column_lineage_dataset as cl
from openlineage.client.facet_v2 import documentation_dataset as doc
from openlineage.client.facet_v2 import schema_dataset as sd
from openlineage.client.facet_v2 import tags_dataset as td

base, key = sys.argv[1], sys.argv[2]
NS = "postgres://db.example.com:5432"


def client(url):
    return OpenLineageClient(
        config={
            "transport": {
                "type": "http",
                "url": url,
                "auth": {"type": "api_key", "apiKey": key},
            }
        }
    )


def field(name, type_, **kw):
    return sd.SchemaDatasetFacetFields(name=name, type=type_, **kw)


orders = InputDataset(
    namespace=NS,
    name="shop.public.orders",
    facets={
        "schema": sd.SchemaDatasetFacet(
            fields=[
                field("id", "INTEGER", description="order id"),
                field("customer_email", "VARCHAR"),
                field("address", "STRUCT", fields=[field("city", "VARCHAR")]),
            ]
        ),
        "tags": td.TagsDatasetFacet(
            tags=[
                td.TagsDatasetFacetFields(
                    key="PII", value="true", source="USER", field="customer_email"
                )
            ]
        ),
    },
)


def lineage(field_name):
    return cl.Fields(
        inputFields=[
            cl.InputField(
                namespace=NS,
                name="shop.public.orders",
                field=field_name,
                transformations=[
                    cl.Transformation(type="DIRECT", subtype="IDENTITY", masking=False)
                ],
            )
        ]
    )


order_emails = OutputDataset(
    namespace=NS,
    name="shop.marts.order_emails",
    facets={
        "schema": sd.SchemaDatasetFacet(
            fields=[field("order_id", "INTEGER"), field("email", "VARCHAR")]
        ),
        "columnLineage": cl.ColumnLineageDatasetFacet(
            fields={"order_id": lineage("id"), "email": lineage("customer_email")}
        ),
        "documentation": doc.DocumentationDatasetFacet(
            description="Orders with the customer's e-mail"
        ),
    },
)

run = Run(runId="0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
job = Job(namespace="etl", name="order_emails")
with_slash = client(base)
for state in (RunState.START, RunState.COMPLETE):
    with_slash.emit(
        RunEvent(
            eventType=state,
            eventTime="2026-12-01T10:00:00Z",
            run=run,
            job=job,
            inputs=[orders],
            outputs=[order_emails],
            producer="https://example.com/lily-test",
        )
    )

without_slash = client(base.rstrip("/"))
without_slash.emit(
    DatasetEvent(
        eventTime="2026-12-01T10:01:00Z",
        producer="https://example.com/lily-test",
        dataset=StaticDataset(
            namespace=NS,
            name="shop.public.customers",
            facets={
                "schema": sd.SchemaDatasetFacet(
                    fields=[field("id", "INTEGER"), field("email", "VARCHAR")]
                )
            },
        ),
    )
)
print("emitted")
