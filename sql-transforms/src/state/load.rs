//! Filling the catalog state from PostgreSQL at start-up, from one
//! consistent snapshot.

use futures::{StreamExt, pin_mut};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use super::{
    Asset, CatalogState, Classification, Edge, Guid, Incident, IncidentLink, Inner, PropagatedValue,
};
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

/// The columns of `metastore.assets` an `Asset` is read from.
const ASSET_COLUMNS: &str = "guid, tenant_id, type_name, qualified_name, parent_guid, owners, certificate, name, description";

/// The asset of a row of `ASSET_COLUMNS`.
fn asset_of(inner: &mut Inner, row: &Row) -> Result<(Guid, Asset)> {
    let tenant = inner.tenant(get::<&str>(row, 1)?);
    let type_name = inner.tenant(get::<&str>(row, 2)?);
    Ok((
        guid(row, 0)?,
        Asset {
            tenant,
            type_name,
            qualified_name: get::<&str>(row, 3)?.into(),
            parent: opt_guid(row, 4)?,
            owners: get::<Vec<String>>(row, 5)?.into_boxed_slice(),
            certificate: get::<Option<&str>>(row, 6)?.map(Into::into),
            name: get::<&str>(row, 7)?.into(),
            description: get::<Option<&str>>(row, 8)?.map(Into::into),
        },
    ))
}

impl CatalogState {
    /// Fetches `guids` (from `unresolved`) from the metastore into the
    /// state, which holds them from then on; the number found.
    pub async fn admit(&self, client: &Client, guids: &[Guid]) -> Result<usize> {
        if guids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = guids.iter().map(|g| Uuid::from_u128(*g)).collect();
        let rows = client
            .query(
                &format!("SELECT {ASSET_COLUMNS} FROM metastore.assets WHERE guid = ANY($1)"),
                &[&ids],
            )
            .await
            .map_err(TransformError::sql(
                "fetching assets the catalog state refers to",
            ))?;
        let mut inner = self.lock();
        let mut admitted = 0;
        for row in &rows {
            let (guid, asset) = asset_of(&mut inner, row)?;
            // One the stream brought meanwhile is at least as new.
            if inner.assets.get(&guid).is_none() {
                inner.assets.insert(guid, Box::new(asset));
                admitted += 1;
            }
        }
        inner.report();
        metrics::counter!("lily_state_assets_admitted_total").increment(admitted as u64);
        Ok(admitted)
    }

    /// Replaces the state with the catalog as it is now in PostgreSQL.
    pub async fn load(&self, client: &mut Client) -> Result<()> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(TransformError::sql("starting the catalog load"))?;
        // Rows go straight into a fresh state, swapped in at the end: no
        // intermediate copy of a large catalog.
        let mut fresh = Inner::default();
        for_each_row(
            &tx,
            "SELECT edge_id, tenant_id, upstream_guid, downstream_guid, process_guid, blocked_tags FROM metastore.lineage_edges",
            &[],
            |row| {
                let tenant = fresh.tenant(get::<&str>(&row, 1)?);
                fresh.insert_edge(
                    guid(&row, 0)?,
                    Box::new(Edge {
                        tenant,
                        upstream: guid(&row, 2)?,
                        downstream: guid(&row, 3)?,
                        process: opt_guid(&row, 4)?,
                        blocked_tags: get(&row, 5)?,
                    }),
                );
                Ok(())
            },
        )
        .await?;
        for_each_row(
            &tx,
            "SELECT classification_id, tenant_id, asset_guid, tag, source, propagated_from, propagate FROM metastore.classifications",
            &[],
            |row| {
                let id = guid(&row, 0)?;
                let c = Classification {
                    tenant: fresh.tenant(get::<&str>(&row, 1)?),
                    asset: guid(&row, 2)?,
                    tag: get(&row, 3)?,
                    direct: get::<&str>(&row, 4)? != "propagated",
                    propagated_from: opt_guid(&row, 5)?,
                    propagate: get(&row, 6)?,
                };
                fresh.classifications_by_asset.entry(c.asset).or_default().push(id);
                fresh.classifications.insert(id, c);
                Ok(())
            },
        )
        .await?;
        for_each_row(
            &tx,
            "SELECT tenant_id, asset_guid, attribute, value, propagated_from FROM metastore.propagated_attributes",
            &[],
            |row| {
                let value = PropagatedValue {
                    tenant: fresh.tenant(get::<&str>(&row, 0)?),
                    attribute: get(&row, 2)?,
                    value: get(&row, 3)?,
                    propagated_from: guid(&row, 4)?,
                };
                fresh.add_propagated(guid(&row, 1)?, value);
                Ok(())
            },
        )
        .await?;
        for_each_row(
            &tx,
            "SELECT incident_id, tenant_id, title, state, severity, incident_type, url, updated_at FROM metastore.incidents",
            &[],
            |row| {
                let tenant = fresh.tenant(get::<&str>(&row, 1)?);
                let incident = Incident {
                    tenant,
                    title: get::<Option<&str>>(&row, 2)?.map(Into::into),
                    state: fresh.tenant(get::<&str>(&row, 3)?),
                    severity: get::<Option<&str>>(&row, 4)?.map(|s| fresh.tenant(s)),
                    incident_type: get::<Option<&str>>(&row, 5)?.map(|s| fresh.tenant(s)),
                    url: get::<Option<&str>>(&row, 6)?.map(Into::into),
                    updated_at: get::<Option<chrono::DateTime<chrono::Utc>>>(&row, 7)?
                        .map(|t| t.timestamp_micros()),
                };
                fresh.incidents.insert(guid(&row, 0)?, Box::new(incident));
                Ok(())
            },
        )
        .await?;
        for_each_row(
            &tx,
            "SELECT tenant_id, incident_id, qualified_name, asset_guid FROM metastore.incident_assets",
            &[],
            |row| {
                let link = IncidentLink {
                    tenant: fresh.tenant(get::<&str>(&row, 0)?),
                    qualified_name: get::<&str>(&row, 2)?.into(),
                    asset: opt_guid(&row, 3)?,
                };
                fresh.incident_links.get_or_default(guid(&row, 1)?).push(link);
                Ok(())
            },
        )
        .await?;
        // Containers, and the columns something refers to; other columns
        // are not held (see `CatalogState::resident`).
        let leaf: Vec<&str> = lily_metastore::LEAF_ASSET_TYPES.to_vec();
        let with_values = !self.attributes.is_empty();
        for_each_row(
            &tx,
            &format!(
                "SELECT {ASSET_COLUMNS} FROM metastore.assets a
                  WHERE a.type_name <> ALL($1)
                     OR a.guid IN (SELECT asset_guid FROM metastore.classifications
                                   UNION SELECT asset_guid FROM metastore.propagated_attributes
                                   UNION SELECT asset_guid FROM metastore.incident_assets
                                          WHERE asset_guid IS NOT NULL)
                     OR ($2 AND (cardinality(a.owners) > 0 OR a.certificate IS NOT NULL))"
            ),
            &[&leaf, &with_values],
            |row| {
                let (guid, asset) = asset_of(&mut fresh, &row)?;
                fresh.assets.insert(guid, Box::new(asset));
                Ok(())
            },
        )
        .await?;
        tx.commit()
            .await
            .map_err(TransformError::sql("ending the catalog load"))?;
        // A fresh state has no snapshots: every table is rebuilt on first use.
        fresh.report();
        *self.lock() = fresh;
        Ok(())
    }
}

async fn for_each_row(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    mut f: impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let rows = tx
        .query_raw(sql, params.iter().copied())
        .await
        .map_err(TransformError::sql("loading the catalog state"))?;
    pin_mut!(rows);
    while let Some(row) = rows.next().await {
        f(row.map_err(TransformError::sql("loading the catalog state"))?)?;
    }
    Ok(())
}
