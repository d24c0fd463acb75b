//! The replicated metastore tables as pgoutput describes them, known without
//! a database: transforms are planned against these shapes (`lily
//! transforms check` runs in an analyst's CI with no PostgreSQL). A test
//! compares them with the catalog of a migrated database.

use lily_cdc::pgoutput::{RelationColumn, RelationMessage, ReplicaIdentity};

use crate::METASTORE_SCHEMA;

const BOOL: u32 = 16;
const INT8: u32 = 20;
const TEXT: u32 = 25;
const JSONB: u32 = 3802;
const TEXT_ARRAY: u32 = 1009;
const TIMESTAMPTZ: u32 = 1184;
const UUID: u32 = 2950;

/// (table, replica identity, columns as (name, type oid, part of the key)).
type TableSpec = (
    &'static str,
    ReplicaIdentity,
    &'static [(&'static str, u32, bool)],
);

const TABLES: &[TableSpec] = &[
    (
        "tenants",
        ReplicaIdentity::Default,
        &[
            ("tenant_id", TEXT, true),
            ("name", TEXT, false),
            ("isolation", TEXT, false),
            ("created_at", TIMESTAMPTZ, false),
            ("updated_at", TIMESTAMPTZ, false),
        ],
    ),
    (
        "assets",
        ReplicaIdentity::Index,
        &[
            ("guid", UUID, true),
            ("tenant_id", TEXT, true),
            ("type_name", TEXT, false),
            ("qualified_name", TEXT, false),
            ("name", TEXT, false),
            ("parent_guid", UUID, false),
            ("attributes", JSONB, false),
            ("owners", TEXT_ARRAY, false),
            ("certificate", TEXT, false),
            ("description", TEXT, false),
            ("created_at", TIMESTAMPTZ, false),
            ("updated_at", TIMESTAMPTZ, false),
            ("version", INT8, false),
        ],
    ),
    (
        "lineage_edges",
        ReplicaIdentity::Full,
        &[
            ("edge_id", UUID, true),
            ("tenant_id", TEXT, true),
            ("upstream_guid", UUID, true),
            ("downstream_guid", UUID, true),
            ("process_guid", UUID, true),
            ("created_at", TIMESTAMPTZ, true),
            ("blocked_tags", TEXT_ARRAY, true),
        ],
    ),
    (
        "classifications",
        ReplicaIdentity::Full,
        &[
            ("classification_id", UUID, true),
            ("tenant_id", TEXT, true),
            ("asset_guid", UUID, true),
            ("tag", TEXT, true),
            ("source", TEXT, true),
            ("propagated_from", UUID, true),
            ("propagate", BOOL, true),
            ("created_at", TIMESTAMPTZ, true),
        ],
    ),
    (
        "incidents",
        ReplicaIdentity::Index,
        &[
            ("incident_id", UUID, true),
            ("tenant_id", TEXT, true),
            ("source_system", TEXT, false),
            ("external_id", TEXT, false),
            ("incident_type", TEXT, false),
            ("title", TEXT, false),
            ("state", TEXT, false),
            ("severity", TEXT, false),
            ("url", TEXT, false),
            ("payload", JSONB, false),
            ("created_at", TIMESTAMPTZ, false),
            ("updated_at", TIMESTAMPTZ, false),
            ("version", INT8, false),
            ("owner", TEXT, false),
            ("source_status", TEXT, false),
        ],
    ),
    (
        "incident_assets",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("incident_id", UUID, true),
            ("qualified_name", TEXT, true),
            ("asset_guid", UUID, true),
            ("match_rule", TEXT, true),
            ("reference", TEXT, true),
        ],
    ),
    (
        "propagated_attributes",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("asset_guid", UUID, true),
            ("attribute", TEXT, true),
            ("value", TEXT, true),
            ("propagated_from", UUID, true),
            ("created_at", TIMESTAMPTZ, true),
        ],
    ),
    (
        "incident_tickets",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("incident_id", UUID, true),
            ("system", TEXT, true),
            ("ticket_key", TEXT, true),
            ("created_at", TIMESTAMPTZ, true),
        ],
    ),
    (
        "masking_policies",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("name", TEXT, true),
            ("tags", TEXT_ARRAY, true),
            ("mask", TEXT, true),
            ("expression", TEXT, true),
            ("unmasked_roles", TEXT_ARRAY, true),
            ("enabled", BOOL, true),
            ("description", TEXT, true),
            ("created_at", TIMESTAMPTZ, true),
            ("updated_at", TIMESTAMPTZ, true),
            ("version", INT8, true),
        ],
    ),
    (
        "governed_tables",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("table_name", TEXT, true),
            ("asset", TEXT, true),
            ("kind", TEXT, true),
            ("connection", TEXT, true),
            ("location", TEXT, true),
            ("created_at", TIMESTAMPTZ, true),
            ("updated_at", TIMESTAMPTZ, true),
            ("version", INT8, true),
        ],
    ),
    (
        "column_policies",
        ReplicaIdentity::Full,
        &[
            ("tenant_id", TEXT, true),
            ("qualified_name", TEXT, true),
            ("table_qualified_name", TEXT, true),
            ("column_name", TEXT, true),
            ("tags", TEXT_ARRAY, true),
            ("mask", TEXT, true),
            ("policies", JSONB, true),
            ("origins", JSONB, true),
            ("cause", TEXT, true),
            ("policy_version", INT8, true),
            ("changed_at", TIMESTAMPTZ, true),
        ],
    ),
];

/// Every replicated metastore table as a Relation message would describe it
/// after the last migration (relation ids are 0: they are per database).
pub fn metastore_relations() -> Vec<RelationMessage> {
    TABLES
        .iter()
        .map(|(name, identity, columns)| RelationMessage {
            relation_id: 0,
            namespace: METASTORE_SCHEMA.to_owned(),
            name: (*name).to_owned(),
            replica_identity: *identity,
            columns: columns
                .iter()
                .map(|(name, type_oid, is_key)| RelationColumn {
                    is_key: *is_key,
                    name: (*name).to_owned(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        })
        .collect()
}
