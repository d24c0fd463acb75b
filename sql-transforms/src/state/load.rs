//! Filling the catalog state from PostgreSQL at start-up, from one
//! consistent snapshot.

use futures::{StreamExt, pin_mut};
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
        // Rows go straight into a fresh state, swapped in at the end: no
        // intermediate copy of a large catalog.
        let mut fresh = Inner::default();
        for_each_row(
            &tx,
            "SELECT guid, tenant_id, type_name, qualified_name, parent_guid, owners, certificate, name, description FROM metastore.assets",
            |row| {
                let tenant = fresh.tenant(get::<&str>(&row, 1)?);
                let type_name = fresh.tenant(get::<&str>(&row, 2)?);
                fresh.assets.insert(
                    guid(&row, 0)?,
                    Box::new(Asset {
                        tenant,
                        type_name,
                        qualified_name: get::<&str>(&row, 3)?.into(),
                        parent: opt_guid(&row, 4)?,
                        owners: get::<Vec<String>>(&row, 5)?.into_boxed_slice(),
                        certificate: get::<Option<&str>>(&row, 6)?.map(Into::into),
                        name: get::<&str>(&row, 7)?.into(),
                        description: get::<Option<&str>>(&row, 8)?.map(Into::into),
                    }),
                );
                Ok(())
            },
        )
        .await?;
        for_each_row(
            &tx,
            "SELECT edge_id, tenant_id, upstream_guid, downstream_guid, process_guid, blocked_tags FROM metastore.lineage_edges",
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
        tx.commit()
            .await
            .map_err(TransformError::sql("ending the catalog load"))?;
        // A fresh state has no snapshots: every table is rebuilt on first use.
        *self.lock() = fresh;
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
