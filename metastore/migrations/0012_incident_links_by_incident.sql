-- An incident's links, found by the incident within its tenant with one
-- index. Reads of the links of many incidents at once (a group of
-- webhooks) filter on both columns; with only the primary key
-- (incident_id, qualified_name) and the name index (tenant_id,
-- qualified_name), a plan made while the table was small ANDs the tenant's
-- whole bitmap with the incident's. This index also serves the foreign key
-- (tenant_id, incident_id) when an incident is deleted.
CREATE INDEX incident_assets_incident ON metastore.incident_assets (tenant_id, incident_id);
