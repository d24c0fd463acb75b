//! What Trino's `opa` access-control plugin sends: `{"input": {"context":
//! ..., "action": ...}}`, as its `OpaQuery`, `OpaQueryInput`,
//! `OpaQueryContext`, `OpaQueryInputAction` and `OpaQueryInputResource`
//! records serialize them (plugin/trino-opa in Trino's source). Fields this
//! module does not use are ignored, so newer plugins' additions (query id,
//! session properties) do not break decisions.

use serde::Deserialize;

/// The body of every request.
#[derive(Debug, Clone, Deserialize)]
pub struct OpaQuery {
    /// The decision's input.
    pub input: OpaInput,
}

/// Who asks and what for.
#[derive(Debug, Clone, Deserialize)]
pub struct OpaInput {
    /// The identity and Trino's version.
    pub context: OpaContext,
    /// The operation and its resources.
    pub action: OpaAction,
}

/// `context`: the query's identity.
#[derive(Debug, Clone, Deserialize)]
pub struct OpaContext {
    /// `identity`: Trino's user and groups.
    pub identity: TrinoIdentity,
}

/// `context.identity`.
#[derive(Debug, Clone, Deserialize)]
pub struct TrinoIdentity {
    /// The user name.
    pub user: String,
    /// The user's groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `action`: one operation on one resource, or a batch of resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpaAction {
    /// `ExecuteQuery`, `SelectFromColumns`, `FilterTables`, `GetColumnMask`, ...
    pub operation: String,
    /// The resource of a single decision.
    #[serde(default)]
    pub resource: Option<Resource>,
    /// The resources of a batch decision.
    #[serde(default)]
    pub filter_resources: Vec<Resource>,
}

/// A resource: exactly one of its fields is set. Only those decisions
/// need are read; the others (user, function, properties) are kept as JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resource {
    /// A table, with the columns asked about (`FilterColumns`, `SelectFromColumns`).
    #[serde(default)]
    pub table: Option<TrinoTable>,
    /// A column (`GetColumnMask`).
    #[serde(default)]
    pub column: Option<TrinoColumn>,
}

/// `TrinoTable`: `catalogName`, `schemaName`, `tableName`, and `columns`
/// when columns are asked about.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrinoTable {
    /// The catalog.
    pub catalog_name: String,
    /// The schema.
    pub schema_name: String,
    /// The table.
    pub table_name: String,
    /// Column names.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// `TrinoColumn`: a column with its Trino type (`Type.getDisplayName()`,
/// e.g. `varchar`, `varchar(20)`, `timestamp(3)`, `integer`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrinoColumn {
    /// The catalog.
    pub catalog_name: String,
    /// The schema.
    pub schema_name: String,
    /// The table.
    pub table_name: String,
    /// The column.
    pub column_name: String,
    /// Its type.
    pub column_type: String,
}
