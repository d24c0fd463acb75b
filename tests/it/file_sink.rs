//! The NDJSON file sink: one file per tenant and day holding every change
//! once, across a crash and a restart of `lily run` (the slot sends again
//! what it had not confirmed; the sink skips what it already wrote). The
//! Delta audit table, written by the same pipeline, is the list of changes
//! to find.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lily_cdc::{Lsn, TenantId};
use lily_tests::{TestEnv, wait_for, wait_streaming};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// Every line of every file: (folder, file, envelope).
fn lines(root: &std::path::Path) -> anyhow::Result<Vec<(String, String, Value)>> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for dir in std::fs::read_dir(root)? {
        let dir = dir?;
        if !dir.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(dir.path())? {
            let file = file?;
            let text = std::fs::read_to_string(file.path())?;
            for line in text.lines() {
                out.push((
                    dir.file_name().to_string_lossy().into_owned(),
                    file.file_name().to_string_lossy().into_owned(),
                    serde_json::from_str(line)?,
                ));
            }
        }
    }
    Ok(out)
}

async fn changes(env: &TestEnv, round: usize) -> anyhow::Result<()> {
    env.client()
        .await?
        .batch_execute(&format!(
            "UPDATE metastore.assets SET description = 'round {round}';
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               SELECT t, 'column', 'db.t.r{round}_' || i, 'r' || i
                 FROM generate_series(1, 50) i, unnest(ARRAY['acme', 'acme-eu']) t;
             DELETE FROM metastore.assets WHERE qualified_name LIKE 'db.t.r{round}_1%';"
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_in_its_tenants_file_once_across_a_crash() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    env.client()
        .await?
        .batch_execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('acme-eu', 'Acme EU');
             INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
               SELECT t, 'table', 'db.t.c' || i, 'c' || i FROM generate_series(1, 30) i, unnest(ARRAY['acme', 'acme-eu']) t;",
        )
        .await?;
    let root = env.dir.path().join("changes");
    let config = env.dir.path().join("file.toml");
    std::fs::write(
        &config,
        format!(
            "[sinks.debug]\ntype = \"file\"\npath = \"{}\"\nflush_interval_ms = 50\n",
            root.display()
        ),
    )?;
    let config_arg = config.display().to_string();
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &[])?;
    wait_streaming(&env, "lily").await?;
    for round in 1..=3 {
        changes(&env, round).await?;
    }
    wait_for("round 3 in the files", WAIT, || async {
        let found = lines(&root)?
            .iter()
            .any(|(_, _, v)| v["after"]["description"] == "round 3");
        Ok(found.then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    // Killed while the slot still holds changes the file already has.
    lily.crash();
    changes(&env, 4).await?;
    let lily = env.spawn_lily_with(&["-c", &config_arg, "run"], &[])?;
    changes(&env, 5).await?;
    wait_for("round 5 in the lake", WAIT, || async {
        Ok((env.audit_count("after LIKE '%round 5%'").await? > 0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", lily.output()))?;
    lily.stop().await?;

    let want = env.audited_positions().await?;
    let lines = lines(&root)?;
    let mut seen: BTreeMap<(String, u64, u64), usize> = BTreeMap::new();
    for (folder, file, v) in &lines {
        let tenant = v["tenant"].as_str().unwrap_or_default();
        assert_eq!(folder, &TenantId::parse(tenant)?.segment(), "{v}");
        let day = &v["commit_time"].as_str().unwrap_or_default()[..10];
        assert_eq!(file, &format!("{day}.ndjson"));
        let lsn: Lsn = v["commit_lsn"].as_str().unwrap_or_default().parse()?;
        let key = (
            v["stream"].as_str().unwrap_or_default().to_owned(),
            lsn.0,
            v["seq"].as_u64().unwrap_or_default(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    // Tenants' changes only: the audit also holds the tenants table.
    let want: BTreeSet<_> = want
        .into_iter()
        .filter(|(t, _, _)| t != "tenants")
        .collect();
    let got: BTreeSet<_> = seen
        .into_keys()
        .filter(|(t, _, _)| t != "tenants")
        .collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} changes missing, e.g. {missing:?}",
        want.difference(&got).count()
    );
    assert_eq!(got, want);
    assert!(got.len() > 500, "{}", got.len());
    assert!(root.join("acme0deu").is_dir());
    Ok(())
}
