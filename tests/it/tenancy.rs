//! Row-level security: a session in the tenant role sees and writes only its tenant.

use lily_tests::{TestEnv, run_lily};

/// Tenants a and b with one table each.
async fn two_tenants(env: &TestEnv) -> anyhow::Result<tokio_postgres::Client> {
    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('a', 'A'), ('b', 'B');
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
         VALUES ('a', 'table', 'x.a', 'a'), ('b', 'table', 'x.b', 'b');",
    )
    .await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_sessions_see_only_their_rows() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = two_tenants(&env).await?;
    c.batch_execute("SET ROLE lily_tenant; SET lily.tenant_id = 'a'")
        .await?;
    let names: Vec<String> = c
        .query("SELECT qualified_name FROM metastore.assets", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["x.a".to_string()]);
    let err = c
        .batch_execute("INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ('b', 'table', 'x.b2', 'b2')")
        .await
        .expect_err("writing into another tenant must fail");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("row-level security"), "{message}");
    c.batch_execute("RESET lily.tenant_id").await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM metastore.assets", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "no tenant set: no rows");
    c.batch_execute("RESET ROLE").await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM metastore.assets", &[])
        .await?
        .get(0);
    assert_eq!(n, 2, "the pipeline's role reads across tenants");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lineage_cannot_point_into_another_tenant() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = two_tenants(&env).await?;
    let err = c
        .batch_execute(
            "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
             SELECT 'a', (SELECT guid FROM metastore.assets WHERE qualified_name = 'x.a'),
                         (SELECT guid FROM metastore.assets WHERE qualified_name = 'x.b')",
        )
        .await
        .expect_err("a cross-tenant edge must be refused");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("foreign key"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_role_that_could_pass_row_level_security_stops_setup_and_run() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    // Every tenant table forces row-level security, on its owner too.
    let unforced: Vec<String> = c
        .query(
            "SELECT format('%I.%I', n.nspname, t.relname) FROM pg_class t
               JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE t.relrowsecurity AND NOT t.relforcerowsecurity",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(unforced.is_empty(), "{unforced:?}");

    // BYPASSRLS, then ownership of a tenant table: named, with the fix.
    c.batch_execute("ALTER ROLE lily_tenant BYPASSRLS").await?;
    let (code, out) = run_lily(&["setup"], &env.lily_env())?;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("BYPASSRLS") && out.contains("NOBYPASSRLS"),
        "{out}"
    );
    let (code, out) = run_lily(&["run"], &env.lily_env())?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("BYPASSRLS"), "lily run checks too: {out}");
    c.batch_execute(
        "ALTER ROLE lily_tenant NOBYPASSRLS; ALTER TABLE metastore.assets OWNER TO lily_tenant",
    )
    .await?;
    let (code, out) = run_lily(&["setup"], &env.lily_env())?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("owns metastore.assets"), "{out}");
    c.batch_execute("ALTER TABLE metastore.assets OWNER TO CURRENT_USER")
        .await?;
    let (code, out) = run_lily(&["setup"], &env.lily_env())?;
    assert_eq!(code, 0, "{out}");
    Ok(())
}

/// Every table the tenant role may read that holds tenants' rows (a
/// `tenant_id` column) is row-secured for its owner too, the tables of
/// later migrations (DataHub's bookkeeping, ...) as much as the first.
#[tokio::test(flavor = "multi_thread")]
async fn every_table_a_tenant_session_can_read_is_row_secured() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    let rows = c
        .query(
            "SELECT format('%I.%I', n.nspname, t.relname), t.relrowsecurity, t.relforcerowsecurity
               FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE t.relkind = 'r' AND n.nspname IN ('metastore', 'lily')
                AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attname = 'tenant_id')
                AND has_table_privilege('lily_tenant', t.oid, 'SELECT')",
            &[],
        )
        .await?;
    let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for must in [
        "metastore.assets",
        "lily.datahub_containers",
        "lily.datahub_parents",
        "lily.datahub_checkpoints",
    ] {
        assert!(
            tables.iter().any(|t| t == must),
            "{must} not found in {tables:?}"
        );
    }
    for r in &rows {
        let (table, on, forced): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        assert!(
            on && forced,
            "{table}: row-level security on {on}, forced {forced}"
        );
    }
    Ok(())
}
