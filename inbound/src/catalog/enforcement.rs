//! `/v1/tenants/{tenant}/masking-policies` and `/governed-tables`: what the
//! SQL endpoint masks and what it serves. Policies are a steward's or an
//! admin's; governed tables (which expose data) an admin's. Both are
//! metastore rows: they stream, are audited and searched like the catalog,
//! and a change reaches every open SQL session at its next statement.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::Deserialize;
use serde_json::{Value, json};

use super::decode;
use crate::auth::{Action, Caller};
use crate::error::{InboundError, Result};
use crate::server::{Body, Inbound, Tenant};

#[derive(Deserialize)]
struct PolicyIn {
    tags: Vec<String>,
    mask: String,
    expression: Option<String>,
    #[serde(default)]
    unmasked_roles: Vec<String>,
    enabled: Option<bool>,
    description: Option<String>,
}

fn check_name(name: &str, what: &str, valid: impl Fn(char) -> bool, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max || !name.chars().all(valid) {
        return Err(InboundError::BadQuery(format!(
            "{what} {name:?} is not a valid name"
        )));
    }
    Ok(())
}

/// A CUSTOM mask must be one SQL expression over `{col}`.
fn check_expression(expression: &str) -> Result<()> {
    let sql = expression.replace("{col}", "\"masked_column\"");
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&datafusion::sql::sqlparser::tokenizer::Token::EOF)?;
            Ok(e)
        })
        .map(|_| ())
        .map_err(|e| {
            InboundError::Unprocessable(format!(
                "expression {expression:?} is not one SQL expression over {{col}}: {e}"
            ))
        })
}

/// `PUT /masking-policies/{name}`: creates or replaces a policy.
pub async fn put_policy(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, name)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    check_name(
        &name,
        "policy",
        |c| c.is_ascii_alphanumeric() || "_.-".contains(c),
        128,
    )?;
    let p: PolicyIn = decode(inbound.json("masking-policy.v1", &body)?)?;
    if let Some(e) = &p.expression {
        check_expression(e)?;
    }
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let row = tx
        .query_one(
            "INSERT INTO metastore.masking_policies AS p
                    (tenant_id, name, tags, mask, expression, unmasked_roles, enabled, description)
             VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, true), $8)
             ON CONFLICT (tenant_id, name) DO UPDATE SET
                 tags = EXCLUDED.tags, mask = EXCLUDED.mask, expression = EXCLUDED.expression,
                 unmasked_roles = EXCLUDED.unmasked_roles, enabled = EXCLUDED.enabled,
                 description = EXCLUDED.description
             RETURNING version",
            &[
                &tenant,
                &name,
                &p.tags,
                &p.mask,
                &p.expression,
                &p.unmasked_roles,
                &p.enabled,
                &p.description,
            ],
        )
        .await?;
    tx.commit().await?;
    let version: i64 = row.get(0);
    tracing::info!(target: "lily::audit", tenant = %tenant, policy = name, mask = p.mask, actor = caller.subject, "masking policy written");
    Ok(Json(json!({ "name": name, "version": version })))
}

/// `GET /masking-policies`: the tenant's policies.
pub async fn list_policies(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let rows = tx
        .query(
            "SELECT name, tags, mask, expression, unmasked_roles, enabled, description, version
               FROM metastore.masking_policies ORDER BY name LIMIT 10000",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "masking_policies": rows.iter().map(|r| json!({
            "name": r.get::<_, String>(0),
            "tags": r.get::<_, Vec<String>>(1),
            "mask": r.get::<_, String>(2),
            "expression": r.get::<_, Option<String>>(3),
            "unmasked_roles": r.get::<_, Vec<String>>(4),
            "enabled": r.get::<_, bool>(5),
            "description": r.get::<_, Option<String>>(6),
            "version": r.get::<_, i64>(7),
        })).collect::<Vec<_>>()
    })))
}

/// `DELETE /masking-policies/{name}`.
pub async fn delete_policy(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, name)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Curate)?;
    delete_one(
        &inbound,
        &tenant,
        "DELETE FROM metastore.masking_policies WHERE tenant_id = $1 AND name = $2",
        &name,
        "masking policy",
    )
    .await?;
    tracing::info!(target: "lily::audit", tenant = %tenant, policy = name, actor = caller.subject, "masking policy deleted");
    Ok(Json(json!({ "name": name, "deleted": true })))
}

#[derive(Deserialize)]
struct GovernedIn {
    asset: String,
    kind: String,
    connection: Option<String>,
    location: String,
}

/// `PUT /governed-tables/{table_name}`: serves a table through the SQL endpoint.
pub async fn put_table(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, table)): Path<(String, String)>,
    caller: Caller,
    Body(body): Body,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Administer)?;
    check_name(
        &table,
        "table",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
        63,
    )?;
    if table.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(InboundError::BadQuery(format!(
            "table {table:?} must start with a letter or _"
        )));
    }
    let g: GovernedIn = decode(inbound.json("governed-table.v1", &body)?)?;
    inbound
        .sql
        .source_allowed(&tenant, g.connection.as_deref(), &g.location)
        .map_err(InboundError::Unprocessable)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let row = tx
        .query_one(
            "INSERT INTO metastore.governed_tables AS g (tenant_id, table_name, asset, kind, connection, location)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, table_name) DO UPDATE SET
                 asset = EXCLUDED.asset, kind = EXCLUDED.kind,
                 connection = EXCLUDED.connection, location = EXCLUDED.location
             RETURNING version",
            &[&tenant, &table, &g.asset, &g.kind, &g.connection, &g.location],
        )
        .await?;
    tx.commit().await?;
    let version: i64 = row.get(0);
    tracing::info!(target: "lily::audit", tenant = %tenant, table, asset = g.asset, actor = caller.subject, "governed table written");
    Ok(Json(json!({ "table_name": table, "version": version })))
}

/// `GET /governed-tables`: the tables the tenant's SQL sessions see.
pub async fn list_tables(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Read)?;
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, &tenant).await?;
    let rows = tx
        .query(
            "SELECT table_name, asset, kind, connection, location, version
               FROM metastore.governed_tables ORDER BY table_name LIMIT 10000",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "governed_tables": rows.iter().map(|r| json!({
            "table_name": r.get::<_, String>(0),
            "asset": r.get::<_, String>(1),
            "kind": r.get::<_, String>(2),
            "connection": r.get::<_, Option<String>>(3),
            "location": r.get::<_, String>(4),
            "version": r.get::<_, i64>(5),
        })).collect::<Vec<_>>()
    })))
}

/// `DELETE /governed-tables/{table_name}`.
pub async fn delete_table(
    State(inbound): State<Arc<Inbound>>,
    Tenant(tenant): Tenant,
    Path((_, table)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Value>> {
    caller.require(&tenant, Action::Administer)?;
    delete_one(
        &inbound,
        &tenant,
        "DELETE FROM metastore.governed_tables WHERE tenant_id = $1 AND table_name = $2",
        &table,
        "governed table",
    )
    .await?;
    Ok(Json(json!({ "table_name": table, "deleted": true })))
}

/// Runs `delete` (`$1` the tenant, `$2` the name) in the tenant's
/// transaction; 404 naming `what` when there was no such row.
async fn delete_one(
    inbound: &Inbound,
    tenant: &lily_cdc::TenantId,
    delete: &str,
    name: &str,
    what: &str,
) -> Result<()> {
    let mut conn = inbound.db.connection().await?;
    let tx = inbound.db.tenant_transaction(&mut conn, tenant).await?;
    let n = tx.execute(delete, &[tenant, &name]).await?;
    tx.commit().await?;
    if n == 0 {
        return Err(InboundError::NotFound(format!("{what} {name}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_expressions_are_one_expression_over_the_column() {
        assert!(check_expression("left({col}, 2) || '***'").is_ok());
        assert!(check_expression("CASE WHEN {col} IS NULL THEN NULL ELSE 'x' END").is_ok());
        assert!(check_expression("{col}; DROP TABLE t").is_err());
        assert!(check_expression("left({col}").is_err());
    }
}
