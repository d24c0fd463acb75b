//! A governed table: its source's table with the tenant's masks applied at
//! the scan, for the caller of the statement, from the policy snapshot
//! current when the statement is planned.
//!
//! Masks are a projection directly above the source's scan, so everything
//! above (joins, aggregates, `WHERE`, `ORDER BY`, `GROUP BY`, views) sees
//! only masked values. Filters are answered `Inexact`: DataFusion keeps
//! evaluating them above the masks, and a filter on a masked column is
//! never handed to the source, so `WHERE email = 'alice@x'` against a
//! hashed column finds nothing rather than the row it names.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::col;

use crate::caller::{SessionCaller, TableRead};
use crate::masks::mask_expr;
use crate::policy::{GovernedTable, Mask, PolicyStore};

/// A governed table as a session sees it.
#[derive(Debug)]
pub struct MaskedTable {
    tenant: String,
    name: String,
    /// The registration the source was opened from.
    registration: GovernedTable,
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    policies: Arc<PolicyStore>,
    policy_wait: Duration,
}

impl MaskedTable {
    /// `inner` served as `name` of `tenant`, masked by `policies`.
    pub fn new(
        tenant: &str,
        registration: GovernedTable,
        inner: Arc<dyn TableProvider>,
        policies: Arc<PolicyStore>,
        policy_wait: Duration,
    ) -> Self {
        // Any column may be masked to NULL.
        let schema = inner.schema();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Self {
            tenant: tenant.to_owned(),
            name: registration.table_name.clone(),
            registration,
            inner,
            schema: Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            policies,
            policy_wait,
        }
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for MaskedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .inner
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Unsupported => p,
                _ => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let caller = state
            .config()
            .get_extension::<SessionCaller>()
            .ok_or_else(|| {
                DataFusionError::Plan(
                    "a governed table is read only by an authenticated session".into(),
                )
            })?;
        let snapshot = self
            .policies
            .current(self.policy_wait)
            .await
            .map_err(external)?;
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        // A statement prepared against a registration since removed or
        // changed (another asset, other tags) must not read its old source.
        let tenant = snapshot
            .tenant(&self.tenant)
            .filter(|t| t.tables.get(&self.name) == Some(&self.registration))
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "governed table {} was registered again or removed since this statement was planned; run or prepare it again",
                    self.name
                ))
            })?;
        let mut masks: Vec<(usize, crate::policy::AppliedMask)> = Vec::new();
        {
            for (pos, &i) in indices.iter().enumerate() {
                let name = self.schema.field(i).name();
                if let Some(m) = tenant.column_mask(&self.name, name, &caller.roles) {
                    masks.push((pos, m));
                }
            }
        }
        caller.record(TableRead {
            table: self.name.clone(),
            columns: indices
                .iter()
                .map(|&i| self.schema.field(i).name().clone())
                .collect(),
            masks: masks
                .iter()
                .map(|(pos, m)| {
                    (
                        self.schema.field(indices[*pos]).name().clone(),
                        m.mask.name().to_owned(),
                        m.policies.clone(),
                    )
                })
                .collect(),
            policy_version: snapshot.version,
        });
        let masks: Vec<(usize, crate::policy::AppliedMask)> = masks
            .into_iter()
            .filter(|(_, m)| m.mask != Mask::None)
            .collect();
        metrics::counter!("lily_sql_masked_columns_total").increment(masks.len() as u64);

        let masked: HashSet<&str> = masks
            .iter()
            .map(|(pos, _)| self.schema.field(indices[*pos]).name().as_str())
            .collect();
        let pushed: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                !f.column_refs()
                    .iter()
                    .any(|c| masked.contains(c.name.as_str()))
            })
            .cloned()
            .collect();
        let limit = if pushed.len() == filters.len() {
            limit
        } else {
            None
        };
        let plan = self.inner.scan(state, projection, &pushed, limit).await?;
        if masks.is_empty() {
            return Ok(plan);
        }

        let input = plan.schema();
        let df_schema = DFSchema::try_from(input.as_ref().clone())?;
        let session = state.as_any().downcast_ref::<SessionState>();
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> =
            Vec::with_capacity(input.fields().len());
        for (pos, field) in input.fields().iter().enumerate() {
            let column = col(datafusion::common::Column::from_name(field.name()));
            let logical = match masks.iter().find(|(p, _)| *p == pos) {
                None => column,
                Some((_, applied)) => {
                    let custom = match (&applied.mask, session) {
                        (Mask::Custom(sql), Some(session)) => {
                            let sql =
                                sql.replace("{col}", &lily_cdc::catalog::quote_ident(field.name()));
                            Some(session.create_logical_expr(&sql, &df_schema).map_err(|e| {
                                DataFusionError::Plan(format!(
                                    "the CUSTOM mask of policy {} on {}.{} does not plan: {e}",
                                    applied.policies.join(", "),
                                    self.name,
                                    field.name()
                                ))
                            })?)
                        }
                        _ => None,
                    };
                    mask_expr(column, &applied.mask, field.data_type(), custom)?
                }
            };
            exprs.push((
                state.create_physical_expr(logical, &df_schema)?,
                field.name().clone(),
            ));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }
}
