//! Transforms in `lily run`: a sink fed by a transform that joins changes
//! against the catalog state, broken files rejected with file and line while
//! the pipeline keeps running, reloads on request.

use std::path::Path;
use std::time::Duration;

use lily_cdc::TableSchema;
use lily_tests::{LilyProcess, TestEnv, run_lily, transforms_dir, wait_for, wait_streaming};

const WAIT: Duration = Duration::from_secs(60);

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

async fn wait_output(lily: &LilyProcess, what: &str, needle: &str) -> anyhow::Result<()> {
    let found = wait_for(what, WAIT, || async {
        Ok(lily.output().contains(needle).then_some(()))
    })
    .await;
    if found.is_err() {
        anyhow::bail!("{what}: no {needle:?} in the output:\n{}", lily.output());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transform_feeds_its_sink_and_survives_a_broken_edit() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let dir = env.dir.path().join("sql-transforms");
    copy_dir(&transforms_dir(), &dir)?;
    let mut vars = env.lily_env();
    vars.retain(|(k, _)| k != "LILY_TRANSFORMS__DIR");
    vars.push(("LILY_TRANSFORMS__DIR".into(), dir.display().to_string()));
    vars.push(("LILY_SINKS__CONSOLE__TYPE".into(), "console".into()));
    vars.push((
        "LILY_SINKS__CONSOLE__TRANSFORM".into(),
        "pii_masked_assets".into(),
    ));
    // Only `lily transforms reload` reloads here.
    vars.push(("LILY_TRANSFORMS__RELOAD_INTERVAL_MS".into(), "0".into()));
    let log = env.dir.path().join("lily.log");
    let lily = LilyProcess::spawn(&["run", "--console"], &vars, &log)?;
    wait_streaming(&env, &env.config.replication.slot).await?;

    let c = env.client().await?;
    c.batch_execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme');
         INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, description)
         VALUES ('acme', 'table', 'crm.customers', 'customers', 'raw CRM export'),
                ('acme', 'column', 'crm.customers.email', 'email', 'e-mail address v1');
         INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
         SELECT 'acme', u.guid, d.guid FROM metastore.assets u, metastore.assets d
         WHERE u.qualified_name = 'crm.customers' AND d.qualified_name = 'crm.customers.email';",
    )
    .await?;
    wait_output(
        &lily,
        "the untagged asset, as it is",
        "description=e-mail address v1",
    )
    .await?;

    // Tag the table PII: propagation tags the column, and the transform
    // then masks the column's description, joining against the state.
    c.batch_execute(
        "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag)
         SELECT 'acme', guid, 'PII' FROM metastore.assets WHERE qualified_name = 'crm.customers'",
    )
    .await?;
    wait_for("the propagated tag", WAIT, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM metastore.classifications WHERE source = 'propagated'",
                &[],
            )
            .await?
            .get(0);
        Ok((n == 1).then_some(()))
    })
    .await?;
    c.batch_execute("UPDATE metastore.assets SET description = 'e-mail address v2' WHERE qualified_name = 'crm.customers.email'")
        .await?;
    wait_output(
        &lily,
        "the masked update",
        "qualified_name=crm.customers.email description=****",
    )
    .await?;
    assert!(
        !lily.output().contains("e-mail address v2"),
        "the PII description leaked"
    );

    // Break the file: the reload reports file and line, the last good
    // version keeps masking.
    let file = dir.join("pii_masked_assets.sql");
    std::fs::write(
        &file,
        "-- an edit gone wrong\nSELECT _op, qualified_name\nFROM changes.assets WHERE\n",
    )?;
    let (code, out) = run_lily(&["transforms", "reload"], &vars)?;
    assert_eq!(code, 0, "{out}");
    wait_output(&lily, "the rejected file", "pii_masked_assets.sql:3:").await?;
    let (code, out) = run_lily(&["transforms", "check"], &vars)?;
    assert_ne!(code, 0, "check must fail on a broken file:\n{out}");
    assert!(out.contains("pii_masked_assets.sql:3:"), "{out}");
    c.batch_execute("UPDATE metastore.assets SET description = 'e-mail address v3' WHERE qualified_name = 'crm.customers.email'")
        .await?;
    wait_for("the update after the broken edit", WAIT, || async {
        Ok((lily.output().matches("description=****").count() >= 2).then_some(()))
    })
    .await?;
    assert!(
        !lily.output().contains("e-mail address v3"),
        "the last good version must keep running"
    );

    // A good new version is picked up on reload.
    let fixed = std::fs::read_to_string(transforms_dir().join("pii_masked_assets.sql"))?
        .replace("'****'", "'[masked]'");
    std::fs::write(&file, fixed)?;
    run_lily(&["transforms", "reload"], &vars)?;
    wait_output(
        &lily,
        "the reloaded transform",
        "loaded=[\"pii_masked_assets\"]",
    )
    .await?;
    c.batch_execute("UPDATE metastore.assets SET description = 'e-mail address v4' WHERE qualified_name = 'crm.customers.email'")
        .await?;
    wait_output(&lily, "the new version's output", "description=[masked]").await?;

    // A version that plans but fails on some rows: the changes it fails on
    // become a dead letter with the error and the rows; the next ones flow.
    // (Counted from here: the log may already name the transform as loaded
    // twice, and the update below must meet the failing version.)
    let loads_before = lily
        .output()
        .matches("loaded=[\"pii_masked_assets\"]")
        .count();
    std::fs::write(
        &file,
        "SELECT _op, qualified_name,\n       CAST(CAST(description AS INT) + 1 AS VARCHAR) AS description\nFROM changes.assets\n",
    )?;
    run_lily(&["transforms", "reload"], &vars)?;
    wait_for("the failing version", WAIT, || async {
        let loads = lily
            .output()
            .matches("loaded=[\"pii_masked_assets\"]")
            .count();
        Ok((loads > loads_before).then_some(()))
    })
    .await?;
    c.batch_execute("UPDATE metastore.assets SET description = 'no number here' WHERE qualified_name = 'crm.customers'")
        .await?;
    let (error, payload, tenant) = wait_for("the transform's dead letter", WAIT, || async {
        let row = c
            .query_opt(
                "SELECT error, convert_from(payload, 'UTF8'), tenant_id FROM lily.dead_letters
                 WHERE source = 'transform' AND error_code = 'transform_run'",
                &[],
            )
            .await?;
        Ok(row.map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, Option<String>>(2),
            )
        }))
    })
    .await?;
    assert!(error.to_lowercase().contains("cast"), "{error}");
    assert!(payload.contains("no number here"), "{payload}");
    assert_eq!(tenant.as_deref(), Some("acme"));
    c.batch_execute(
        "UPDATE metastore.assets SET description = '42' WHERE qualified_name = 'crm.customers'",
    )
    .await?;
    wait_output(
        &lily,
        "the change after the failed one",
        "qualified_name=crm.customers description=43",
    )
    .await?;
    let (code, out) = run_lily(&["dlq", "list", "--source", "transform"], &vars)?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("console via pii_masked_assets: metastore.assets"),
        "{out}"
    );
    let (code, out) = run_lily(&["dlq", "replay", "--source", "transform"], &vars)?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("fix the transform"), "{out}");
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_to_a_missing_transform_stops_the_start() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut vars = env.lily_env();
    vars.push(("LILY_SINKS__CONSOLE__TYPE".into(), "console".into()));
    vars.push((
        "LILY_SINKS__CONSOLE__TRANSFORM".into(),
        "no_such_transform".into(),
    ));
    let (code, out) = run_lily(&["run", "--console"], &vars)?;
    assert_ne!(code, 0);
    assert!(
        out.contains("sink console is fed by transform no_such_transform, which did not load"),
        "{out}"
    );
    Ok(())
}

/// The shapes transforms are planned against (known without a database)
/// are the shapes the migrated metastore streams.
#[tokio::test(flavor = "multi_thread")]
async fn planned_table_shapes_match_the_metastore() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    let published =
        lily_cdc::catalog::published_tables(&c, &env.config.replication.publication).await?;
    let expected = lily_metastore::metastore_relations();
    assert_eq!(published.len(), expected.len(), "{published:?}");
    for (schema, table) in published {
        let live = lily_cdc::catalog::relation(&c, &schema, &table).await?;
        let known = expected
            .iter()
            .find(|r| r.namespace == schema && r.name == table)
            .ok_or_else(|| anyhow::anyhow!("{schema}.{table} is not in metastore_relations()"))?;
        assert_eq!(live.columns, known.columns, "{schema}.{table}");
        assert_eq!(
            live.replica_identity, known.replica_identity,
            "{schema}.{table}"
        );
        assert_eq!(
            TableSchema::from_relation(&live).arrow,
            TableSchema::from_relation(known).arrow
        );
    }
    Ok(())
}
