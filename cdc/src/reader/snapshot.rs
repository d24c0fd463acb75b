//! The initial snapshot: the slot recreated with an exported snapshot, and
//! every published table copied at it.

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use tracing::info;

use super::{ChangeReader, OpenTransaction};
use crate::batch::{ChangeMeta, ChangeOp, TableSchema};
use crate::catalog::{self, quote_ident};
use crate::copy::{self, CopyRow};
use crate::error::{CdcError, Result};
use crate::lsn::{Lsn, Position};
use crate::slot::SnapshotState;
use crate::wire::{PG_EPOCH_OFFSET_MICROS, ReplicationConnection};

impl ChangeReader {
    /// Creates the slot with an exported snapshot and copies every published table at it.
    pub(super) async fn snapshot(&mut self, conn: &mut ReplicationConnection) -> Result<Lsn> {
        self.slot.drop_if_exists(&self.sql).await?;
        let (point, snapshot) = self.slot.create_exporting_snapshot(conn).await?;
        SnapshotState::InProgress { at: point }
            .save(&self.sql, &self.config.slot)
            .await?;
        info!(consistent_point = %point, %snapshot, "slot created; copying tables at its snapshot");
        let tables = catalog::published_tables(&self.sql, &self.config.publication).await?;
        let sql = self.sql.clone();
        sql.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(CdcError::sql("opening the snapshot transaction"))?;
        sql.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
            .await
            .map_err(CdcError::sql("importing the slot's snapshot"))?;
        let micros = crate::wire::now_pg_micros() + PG_EPOCH_OFFSET_MICROS;
        self.tx = Some(OpenTransaction {
            commit_lsn: point,
            commit_micros: micros,
            xid: 0,
            next_seq: 0,
        });
        for (schema, name) in tables {
            let rel = catalog::relation(&sql, &schema, &name).await?;
            let table = Arc::new(TableSchema::from_relation(&rel));
            let relation_id = table.relation_id;
            let cols = table
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            self.register_table(table);
            let query = format!(
                "COPY {}.{} ({cols}) TO STDOUT (FORMAT binary)",
                quote_ident(&schema),
                quote_ident(&name)
            );
            let rows = self.copy_table(&sql, &query, relation_id).await?;
            info!(table = %format!("{schema}.{name}"), rows, "table copied");
        }
        self.tx = None;
        sql.batch_execute("COMMIT")
            .await
            .map_err(CdcError::sql("closing the snapshot transaction"))?;
        if self.buffered_rows > 0 {
            self.flush(None).await?;
        }
        self.last_marker = point;
        Ok(point)
    }

    pub(super) async fn copy_table(
        &mut self,
        sql: &tokio_postgres::Client,
        query: &str,
        relation_id: u32,
    ) -> Result<u64> {
        let stream = sql
            .copy_out(query)
            .await
            .map_err(CdcError::sql(query.to_string()))?;
        futures::pin_mut!(stream);
        let mut buf = BytesMut::new();
        let mut header_done = false;
        let mut rows = 0u64;
        while let Some(chunk) = stream.next().await {
            let mut values = Vec::new();
            let chunk = chunk.map_err(CdcError::sql(query.to_string()))?;
            buf.extend_from_slice(&chunk);
            let mut pos = 0;
            if !header_done {
                match copy::header_len(&buf).map_err(CdcError::Protocol)? {
                    Some(n) => {
                        pos = n;
                        header_done = true;
                    }
                    None => continue,
                }
            }
            loop {
                let tx = self
                    .tx
                    .as_mut()
                    .ok_or_else(|| CdcError::Protocol("snapshot without transaction".into()))?;
                let meta = ChangeMeta {
                    op: ChangeOp::Read,
                    position: Position {
                        commit_lsn: tx.commit_lsn,
                        seq: tx.next_seq,
                    },
                    commit_micros: tx.commit_micros,
                    xid: 0,
                };
                match copy::read_row(&buf[pos..], &mut values).map_err(CdcError::Protocol)? {
                    CopyRow::Row(n) => {
                        tx.next_seq += 1;
                        self.append(relation_id, meta, Some(&values), None)?;
                        pos += n;
                        rows += 1;
                    }
                    CopyRow::End | CopyRow::Incomplete => break,
                }
            }
            drop(values);
            let _ = buf.split_to(pos);
            if self.buffered_rows >= self.config.batch_max_rows
                || self.buffered_bytes >= self.config.batch_max_bytes
            {
                self.flush(None).await?;
            }
        }
        Ok(rows)
    }
}
