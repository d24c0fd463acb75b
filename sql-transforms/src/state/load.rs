//! Filling the catalog state from PostgreSQL at start-up, from one
//! consistent snapshot.

use futures::{StreamExt, pin_mut};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use super::{Asset, CatalogState, Classification, Edge, Guid, PropagatedValue, StateTable};
use crate::error::{Result, TransformError};

fn guid(row: &Row, i: usize) -> Result<Guid> {
    row.try_get::<_, Uuid>(i)
        .map(|u| u.as_u128())
        .map_err(|e| TransformError::State(format!("reading the catalog: {e}")))
}

fn opt_guid(row: &Row, i: usize) -> Result<Option<Guid>> {
    row.try_get::<_, Option<Uuid>>(i)
        .map(|u| u.map(|u| u.as_u128()))
        .map_err(|e| TransformError::State(format!("reading the catalog: {e}")))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| TransformError::State(format!("reading the catalog: {e}")))
}

impl CatalogState {
    /// Replaces the state with the catalog as it is now in PostgreSQL.
    pub async fn load(&self, client: &mut Client) -> Result<()> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(TransformError::sql("starting the catalog load"))?;
        let mut assets = Vec::new();
        for_each_row(
            &tx,
            "SELECT guid, tenant_id, type_name, qualified_name, name, parent_guid, owners, certificate FROM metastore.assets",
            |row| {
                assets.push((
                    guid(&row, 0)?,
                    get::<String>(&row, 1)?,
                    Asset {
                        tenant: "".into(),
                        type_name: get(&row, 2)?,
                        qualified_name: get(&row, 3)?,
                        name: get(&row, 4)?,
                        parent: opt_guid(&row, 5)?,
                        owners: get(&row, 6)?,
                        certificate: get(&row, 7)?,
                    },
                ));
                Ok(())
            },
        )
        .await?;
        let mut edges = Vec::new();
        for_each_row(
            &tx,
            "SELECT edge_id, tenant_id, upstream_guid, downstream_guid, process_guid, blocked_tags FROM metastore.lineage_edges",
            |row| {
                edges.push((
                    guid(&row, 0)?,
                    get::<String>(&row, 1)?,
                    Edge {
                        tenant: "".into(),
                        upstream: guid(&row, 2)?,
                        downstream: guid(&row, 3)?,
                        process: opt_guid(&row, 4)?,
                        blocked_tags: get(&row, 5)?,
                    },
                ));
                Ok(())
            },
        )
        .await?;
        let mut classifications = Vec::new();
        for_each_row(
            &tx,
            "SELECT classification_id, tenant_id, asset_guid, tag, source, propagated_from, propagate FROM metastore.classifications",
            |row| {
                classifications.push((
                    guid(&row, 0)?,
                    get::<String>(&row, 1)?,
                    Classification {
                        tenant: "".into(),
                        asset: guid(&row, 2)?,
                        tag: get(&row, 3)?,
                        direct: get::<String>(&row, 4)? != "propagated",
                        propagated_from: opt_guid(&row, 5)?,
                        propagate: get(&row, 6)?,
                    },
                ));
                Ok(())
            },
        )
        .await?;
        let mut propagated = Vec::new();
        for_each_row(
            &tx,
            "SELECT tenant_id, asset_guid, attribute, value, propagated_from FROM metastore.propagated_attributes",
            |row| {
                propagated.push((
                    get::<String>(&row, 0)?,
                    guid(&row, 1)?,
                    get::<String>(&row, 2)?,
                    get::<String>(&row, 3)?,
                    guid(&row, 4)?,
                ));
                Ok(())
            },
        )
        .await?;
        tx.commit()
            .await
            .map_err(TransformError::sql("ending the catalog load"))?;

        let mut inner = self.lock();
        inner.assets.clear();
        inner.edges.clear();
        inner.classifications.clear();
        inner.classifications_by_asset.clear();
        inner.propagated.clear();
        for (g, tenant, mut a) in assets {
            a.tenant = inner.tenant(&tenant);
            inner.assets.insert(g, a);
        }
        for (g, tenant, mut e) in edges {
            e.tenant = inner.tenant(&tenant);
            inner.edges.insert(g, e);
        }
        for (g, tenant, mut c) in classifications {
            c.tenant = inner.tenant(&tenant);
            inner
                .classifications_by_asset
                .entry(c.asset)
                .or_default()
                .push(g);
            inner.classifications.insert(g, c);
        }
        for (tenant, asset, attribute, value, from) in propagated {
            let tenant = inner.tenant(&tenant);
            inner
                .propagated
                .entry(asset)
                .or_default()
                .insert(PropagatedValue {
                    tenant,
                    attribute,
                    value,
                    propagated_from: from,
                });
        }
        for t in StateTable::ALL {
            inner.touch(t);
        }
        Ok(())
    }
}

async fn for_each_row(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    mut f: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let rows = tx
        .query_raw(sql, std::iter::empty::<&str>())
        .await
        .map_err(TransformError::sql("loading the catalog state"))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        f(row.map_err(TransformError::sql("loading the catalog state"))?)?;
    }
    Ok(())
}
