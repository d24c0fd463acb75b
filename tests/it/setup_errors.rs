//! `lily setup` on a server that is not ready: a clear message naming the
//! problem and the fix, a non-zero exit, and nothing half-created.

use lily_tests::{DB, TestEnv, run_lily};

async fn lily_schemas(env: &TestEnv, db: &str) -> anyhow::Result<i64> {
    let c = env.cluster.connect(db).await?;
    Ok(c.query_one(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('lily', 'metastore')",
        &[],
    )
    .await?
    .get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_wal_level_is_named_with_its_fix() -> anyhow::Result<()> {
    let env = TestEnv::with_settings(&[("wal_level", "replica")]).await?;
    let (code, out) = run_lily(&["setup"], &env.lily_env())?;
    assert_ne!(code, 0);
    assert!(out.contains("wal_level is 'replica'"), "{out}");
    assert!(
        out.contains("ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(lily_schemas(&env, DB).await?, 0, "nothing half-created");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_replication_right_is_named_with_its_fix() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let admin = env.client().await?;
    admin.batch_execute("CREATE ROLE app LOGIN").await?;
    admin
        .batch_execute("CREATE DATABASE appdb OWNER app")
        .await?;
    let mut vars = env.lily_env();
    vars.retain(|(k, _)| k != "LILY_POSTGRES__URL");
    vars.push((
        "LILY_POSTGRES__URL".into(),
        env.cluster.url_as("app", "appdb"),
    ));
    let (code, out) = run_lily(&["setup"], &vars)?;
    assert_ne!(code, 0);
    assert!(
        out.contains("role app lacks the REPLICATION attribute"),
        "{out}"
    );
    assert!(out.contains("ALTER ROLE \"app\" WITH REPLICATION"), "{out}");
    assert!(
        out.contains("replication slot lily already exists for database lily"),
        "{out}"
    );
    assert_eq!(
        lily_schemas(&env, "appdb").await?,
        0,
        "nothing half-created"
    );

    // With the right granted and a slot name of its own, setup succeeds, and a second run changes nothing.
    admin
        .batch_execute("ALTER ROLE app WITH REPLICATION")
        .await?;
    vars.push(("LILY_REPLICATION__SLOT".into(), "app_slot".into()));
    let (code, out) = run_lily(&["setup"], &vars)?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replication slot app_slot: created"), "{out}");
    let (code, out) = run_lily(&["setup"], &vars)?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("migrations: up to date") && out.contains("replication slot app_slot: exists"),
        "{out}"
    );
    Ok(())
}

#[test]
fn unreachable_server_is_named() -> anyhow::Result<()> {
    let vars = vec![(
        "LILY_POSTGRES__URL".to_string(),
        "postgres://lily@127.0.0.1:1/lily".to_string(),
    )];
    let (code, out) = run_lily(&["setup"], &vars)?;
    assert_ne!(code, 0);
    assert!(
        out.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{out}"
    );
    assert!(out.contains("fix:"), "{out}");
    Ok(())
}

#[test]
fn bad_config_values_are_named() -> anyhow::Result<()> {
    let vars = vec![(
        "LILY_REPLICATION__BATCH_MAX_ROWS".to_string(),
        "many".to_string(),
    )];
    let (code, out) = run_lily(&["setup"], &vars)?;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("LILY_REPLICATION__BATCH_MAX_ROWS")
            && out.contains("replication.batch_max_rows"),
        "{out}"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lily.toml");
    std::fs::write(&file, "[replication]\nslot = \"Bad-Slot\"\n")?;
    let (code, out) = run_lily(
        &["--config", file.to_str().unwrap_or_default(), "setup"],
        &[],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("replication.slot") && out.contains("Bad-Slot"),
        "{out}"
    );

    std::fs::write(&file, "[replication]\nslots = \"x\"\n")?;
    let (code, out) = run_lily(
        &["--config", file.to_str().unwrap_or_default(), "setup"],
        &[],
    )?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("slots"), "{out}");
    Ok(())
}
