//! Table shapes read from the system catalog, for the snapshot: the same
//! shape a pgoutput Relation message would describe, so snapshot rows and
//! streamed rows share one Arrow schema.

use tokio_postgres::Client;

use crate::error::{CdcError, Result};
use crate::pgoutput::{RelationColumn, RelationMessage, ReplicaIdentity};

/// Tables in `publication`, as (schema, table).
pub async fn published_tables(client: &Client, publication: &str) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(CdcError::sql(format!(
            "listing the tables of publication {publication}"
        )))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The relation as pgoutput would describe it.
pub async fn relation(client: &Client, schema: &str, table: &str) -> Result<RelationMessage> {
    let row = client
        .query_one(
            "SELECT c.oid, c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(CdcError::sql(format!("looking up table {schema}.{table}")))?;
    let relation_id: u32 = row.get(0);
    let replica_identity = match row.get::<_, String>(1).as_str() {
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    // pgoutput flags every column as key under REPLICA IDENTITY FULL, and
    // leaves generated columns out.
    let columns = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
               (c.relreplident = 'f' OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                 AND a.attnum = ANY(i.indkey::int2[]) \
                 AND CASE c.relreplident WHEN 'i' THEN i.indisreplident WHEN 'd' THEN i.indisprimary ELSE false END)) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&relation_id],
        )
        .await
        .map_err(CdcError::sql(format!("reading the columns of {schema}.{table}")))?
        .iter()
        .map(|r| RelationColumn {
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: r.get(2),
            is_key: r.get(3),
        })
        .collect();
    Ok(RelationMessage {
        relation_id,
        namespace: schema.to_string(),
        name: table.to_string(),
        replica_identity,
        columns,
    })
}

/// `"schema"."table"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
