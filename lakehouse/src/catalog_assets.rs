//! `catalog/assets`: the lake lane of bulk loads. Columns and BI fields of
//! a load land here first, one Delta commit per chunk, queryable with
//! DataFusion or DuckDB as soon as the commit lands; `lily run` promotes
//! them into the metastore in the background, in `seq` order. Partitioned
//! by tenant; each row carries its load and its position in it, so a
//! resumed load knows where the lake stopped.

use std::sync::Arc;

use crate::location::append_batch;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use deltalake::DeltaTable;
use tracing::info;

use crate::{LakeError, LakeLocation};

/// The table, relative to the lake root.
pub const CATALOG_ASSETS_TABLE: &str = "catalog/assets";

/// One asset of a load, as the lake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeAsset {
    /// Its tenant.
    pub tenant_id: String,
    /// The load it came with.
    pub load_id: String,
    /// Its position in the load (a line number); increasing.
    pub seq: i64,
    /// Qualified name.
    pub qualified_name: String,
    /// Asset type (`column`, `bi_field`).
    pub type_name: String,
    /// Display name, when given.
    pub name: Option<String>,
    /// The parent's qualified name.
    pub parent: Option<String>,
    /// Description, when given.
    pub description: Option<String>,
    /// Attributes as a JSON object.
    pub attributes: String,
    /// Owners as a JSON array, when given.
    pub owners: Option<String>,
}

/// The Arrow schema of `catalog/assets`.
pub fn catalog_assets_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tenant_id", DataType::Utf8, false),
        Field::new("load_id", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("qualified_name", DataType::Utf8, false),
        Field::new("type_name", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("parent", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, false),
        Field::new("owners", DataType::Utf8, true),
    ]))
}

fn to_batch(rows: &[LakeAsset]) -> Result<RecordBatch, LakeError> {
    let text = |f: &dyn Fn(&LakeAsset) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let opt = |f: &dyn Fn(&LakeAsset) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| &r.tenant_id),
        text(&|r| &r.load_id),
        Arc::new(rows.iter().map(|r| r.seq).collect::<Int64Array>()),
        text(&|r| &r.qualified_name),
        text(&|r| &r.type_name),
        opt(&|r| r.name.as_deref()),
        opt(&|r| r.parent.as_deref()),
        opt(&|r| r.description.as_deref()),
        text(&|r| &r.attributes),
        opt(&|r| r.owners.as_deref()),
    ];
    Ok(RecordBatch::try_new(catalog_assets_schema(), columns)?)
}

fn from_batch(batch: &RecordBatch, out: &mut Vec<LakeAsset>) -> Result<(), LakeError> {
    // Partition columns come back dictionary-encoded, others may be views:
    // each is cast to plain text.
    let col = |name: &str| -> Result<StringArray, LakeError> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            LakeError::Arrow(arrow::error::ArrowError::SchemaError(format!(
                "catalog/assets has no column {name}"
            )))
        })?;
        Ok(arrow::compute::cast(c, &DataType::Utf8)?
            .as_string::<i32>()
            .clone())
    };
    let seq = batch
        .column_by_name("seq")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| {
            LakeError::Arrow(arrow::error::ArrowError::SchemaError(
                "catalog/assets has no seq".into(),
            ))
        })?;
    let (tenant, load, qn, ty, name, parent, desc, attrs, owners) = &(
        col("tenant_id")?,
        col("load_id")?,
        col("qualified_name")?,
        col("type_name")?,
        col("name")?,
        col("parent")?,
        col("description")?,
        col("attributes")?,
        col("owners")?,
    );
    let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    for i in 0..batch.num_rows() {
        out.push(LakeAsset {
            tenant_id: tenant.value(i).to_owned(),
            load_id: load.value(i).to_owned(),
            seq: seq.value(i),
            qualified_name: qn.value(i).to_owned(),
            type_name: ty.value(i).to_owned(),
            name: opt(name, i),
            parent: opt(parent, i),
            description: opt(desc, i),
            attributes: attrs.value(i).to_owned(),
            owners: opt(owners, i),
        });
    }
    Ok(())
}

/// `catalog/assets`: appended by `lily ingest`, read by the promoter.
pub struct CatalogAssets {
    table: DeltaTable,
}

impl CatalogAssets {
    /// Opens the table under `location`, creating it if missing.
    pub async fn open(location: &LakeLocation) -> Result<Self, LakeError> {
        let table = location
            .open_or_create(
                CATALOG_ASSETS_TABLE,
                &catalog_assets_schema(),
                &["tenant_id"],
                "Columns and BI fields of bulk loads, before the metastore has them",
            )
            .await?;
        info!(table = %table.table_url(), "catalog assets table opened");
        Ok(Self { table })
    }

    /// Appends `rows` in one Delta commit.
    pub async fn append(&mut self, rows: &[LakeAsset]) -> Result<(), LakeError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.table = append_batch(&self.table, to_batch(rows)?, &["tenant_id"]).await?;
        Ok(())
    }

    /// Rows of `load_id` in `tenant` after position `after`, at most
    /// `limit`, in order, from the newest version of the table.
    pub async fn read(
        &mut self,
        tenant: &str,
        load_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<LakeAsset>, LakeError> {
        let rows = self
            .query(&format!(
                "SELECT * FROM assets WHERE tenant_id = '{}' AND load_id = '{}' AND seq > {after}
                  ORDER BY seq LIMIT {limit}",
                quote(tenant),
                quote(load_id)
            ))
            .await?;
        let mut out = Vec::new();
        for b in &rows {
            from_batch(b, &mut out)?;
        }
        Ok(out)
    }

    /// The lake rows of `names` in `tenant` that wait for promotion: rows
    /// of `pending` loads (id and watermark, oldest load first) after the
    /// load's watermark. Of a name in several, the newest load's last row.
    pub async fn find(
        &mut self,
        tenant: &str,
        names: &[&str],
        pending: &[(String, i64)],
    ) -> Result<Vec<LakeAsset>, LakeError> {
        if names.is_empty() || pending.is_empty() {
            return Ok(Vec::new());
        }
        let list = names
            .iter()
            .map(|n| format!("'{}'", quote(n)))
            .collect::<Vec<_>>()
            .join(", ");
        let after = pending
            .iter()
            .map(|(load, seq)| format!("(load_id = '{}' AND seq > {seq})", quote(load)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let rows = self
            .query(&format!(
                "SELECT * FROM assets WHERE tenant_id = '{}' AND qualified_name IN ({list}) AND ({after})",
                quote(tenant)
            ))
            .await?;
        let mut all = Vec::new();
        for b in &rows {
            from_batch(b, &mut all)?;
        }
        let rank = |r: &LakeAsset| {
            let load = pending.iter().position(|(l, _)| *l == r.load_id);
            (load, r.seq)
        };
        all.sort_by_key(rank);
        // The last row of a name wins.
        let mut newest: std::collections::BTreeMap<String, LakeAsset> = Default::default();
        for r in all {
            newest.insert(r.qualified_name.clone(), r);
        }
        Ok(newest.into_values().collect())
    }

    /// The last position of `load_id` the lake holds (0 when none).
    pub async fn last_seq(&mut self, tenant: &str, load_id: &str) -> Result<i64, LakeError> {
        let rows = self
            .query(&format!(
                "SELECT max(seq) AS seq FROM assets WHERE tenant_id = '{}' AND load_id = '{}'",
                quote(tenant),
                quote(load_id)
            ))
            .await?;
        Ok(rows
            .first()
            .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
            .filter(|a| !a.is_empty() && !a.is_null(0))
            .map(|a| a.value(0))
            .unwrap_or(0))
    }

    /// Per parent (a table) of `load_id`: its lake rows, and how many are
    /// at or before `watermark` (promoted), parents in name order.
    pub async fn parents(
        &mut self,
        tenant: &str,
        load_id: &str,
        watermark: i64,
    ) -> Result<Vec<(String, i64, i64)>, LakeError> {
        let batches = self
            .query(&format!(
                "SELECT coalesce(parent, '') AS parent, count(*) AS total,
                        sum(CASE WHEN seq <= {watermark} THEN 1 ELSE 0 END) AS promoted
                   FROM assets WHERE tenant_id = '{}' AND load_id = '{}'
                  GROUP BY coalesce(parent, '') ORDER BY 1",
                quote(tenant),
                quote(load_id)
            ))
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            let parent = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let parent = parent.as_string::<i32>();
            let total = arrow::compute::cast(b.column(1), &DataType::Int64)?;
            let promoted = arrow::compute::cast(b.column(2), &DataType::Int64)?;
            let (total, promoted) = (
                total.as_primitive::<Int64Type>(),
                promoted.as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                out.push((
                    parent.value(i).to_owned(),
                    total.value(i),
                    promoted.value(i),
                ));
            }
        }
        Ok(out)
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>, LakeError> {
        let url = self.table.table_url().to_string();
        self.table
            .update_state()
            .await
            .map_err(|source| LakeError::Delta {
                table: url.clone(),
                source,
            })?;
        let ctx = datafusion::prelude::SessionContext::new();
        let provider = self
            .table
            .table_provider()
            .await
            .map_err(|e| LakeError::Query(format!("{url}: {e}")))?;
        ctx.register_table("assets", provider)
            .map_err(|e| LakeError::Query(e.to_string()))?;
        ctx.sql(sql)
            .await
            .map_err(|e| LakeError::Query(e.to_string()))?
            .collect()
            .await
            .map_err(|e| LakeError::Query(e.to_string()))
    }
}

/// A string literal's inside, quotes doubled.
fn quote(s: &str) -> String {
    s.replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_read_back_in_order_after_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let location =
            LakeLocation::parse(&dir.path().display().to_string(), Default::default()).unwrap();
        let mut lake = CatalogAssets::open(&location).await.unwrap();
        let row = |seq: i64, tenant: &str| LakeAsset {
            tenant_id: tenant.into(),
            load_id: "l1".into(),
            seq,
            qualified_name: format!("t.c{seq}"),
            type_name: "column".into(),
            name: None,
            parent: Some("t".into()),
            description: None,
            attributes: "{}".into(),
            owners: None,
        };
        lake.append(&[row(1, "a"), row(2, "a"), row(5, "a"), row(3, "b")])
            .await
            .unwrap();
        lake.append(&[row(7, "a")]).await.unwrap();
        let got: Vec<i64> = lake
            .read("a", "l1", 1, 2)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(got, [2, 5]);
        assert_eq!(lake.last_seq("a", "l1").await.unwrap(), 7);
        assert_eq!(lake.last_seq("a", "other").await.unwrap(), 0);
        assert_eq!(lake.read("b", "l1", 0, 10).await.unwrap()[0], row(3, "b"));
        assert_eq!(
            lake.parents("a", "l1", 2).await.unwrap(),
            [("t".to_owned(), 4, 2)]
        );
    }
}
