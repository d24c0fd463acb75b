//! Lineage propagation end to end: tags written in PostgreSQL reach every
//! downstream asset through `lily run`, and are taken back.

use std::collections::BTreeSet;
use std::time::Duration;

use lily_tests::{TestEnv, wait_for, wait_streaming};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(60);

/// Assets and lineage of one tenant. Every name is a column asset.
/// chain:    src1 -> a -> b -> c
/// diamond:  src1 -> d1 -> j, src1 -> d2 -> j
/// cycle:    c -> cy1 -> cy2 -> c
/// second source: src2 -> j
async fn estate(c: &Client, tenant: &str) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO metastore.tenants (tenant_id, name) VALUES ($1, $1)",
        &[&tenant],
    )
    .await?;
    for name in [
        "src1", "src2", "a", "b", "c", "d1", "d2", "j", "cy1", "cy2", "newt",
    ] {
        c.execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) VALUES ($1, 'column', $2, $2)",
            &[&tenant, &name],
        )
        .await?;
    }
    for (up, down) in [
        ("src1", "a"),
        ("a", "b"),
        ("b", "c"),
        ("src1", "d1"),
        ("src1", "d2"),
        ("d1", "j"),
        ("d2", "j"),
        ("c", "cy1"),
        ("cy1", "cy2"),
        ("cy2", "c"),
        ("src2", "j"),
    ] {
        edge(c, tenant, up, down).await?;
    }
    Ok(())
}

async fn edge(c: &Client, tenant: &str, up: &str, down: &str) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid) \
         SELECT $1, u.guid, d.guid FROM metastore.assets u, metastore.assets d \
         WHERE u.tenant_id = $1 AND d.tenant_id = $1 AND u.qualified_name = $2 AND d.qualified_name = $3",
        &[&tenant, &up, &down],
    )
    .await?;
    Ok(())
}

async fn tag(c: &Client, tenant: &str, asset: &str, tag: &str) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag) \
         SELECT $1, guid, $3 FROM metastore.assets WHERE tenant_id = $1 AND qualified_name = $2",
        &[&tenant, &asset, &tag],
    )
    .await?;
    Ok(())
}

/// The propagated copies of `tag` in `tenant`, as "asset<-origin".
async fn propagated(c: &Client, tenant: &str, tag: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(c
        .query(
            "SELECT a.qualified_name || '<-' || o.qualified_name FROM metastore.classifications c \
             JOIN metastore.assets a ON a.guid = c.asset_guid JOIN metastore.assets o ON o.guid = c.propagated_from \
             WHERE c.tenant_id = $1 AND c.tag = $2 AND c.source = 'propagated'",
            &[&tenant, &tag],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn wait_propagated(
    c: &Client,
    tenant: &str,
    tag: &str,
    want: &BTreeSet<String>,
    what: &str,
) -> anyhow::Result<()> {
    let result = wait_for(what, WAIT, || async {
        let got = propagated(c, tenant, tag).await?;
        Ok((got == *want).then_some(()))
    })
    .await;
    if result.is_err() {
        let got = propagated(c, tenant, tag).await?;
        anyhow::bail!("{what}: want {want:?}, have {got:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_propagate_through_lineage_and_are_taken_back() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    estate(&c, "acme").await?;
    // The same estate in another tenant, never tagged: nothing may reach it.
    estate(&c, "globex").await?;
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, &env.config.replication.slot).await?;

    // Multi-hop chain, diamond and cycle: every downstream column, once.
    tag(&c, "acme", "src1", "PII").await?;
    let from_src1 = [
        "a<-src1",
        "b<-src1",
        "c<-src1",
        "cy1<-src1",
        "cy2<-src1",
        "d1<-src1",
        "d2<-src1",
        "j<-src1",
    ];
    wait_propagated(&c, "acme", "PII", &set(&from_src1), "PII from src1").await?;

    // A second, independent source of the same tag on a shared descendant.
    tag(&c, "acme", "src2", "PII").await?;
    let mut both: Vec<&str> = from_src1.to_vec();
    both.push("j<-src2");
    wait_propagated(&c, "acme", "PII", &set(&both), "PII from src1 and src2").await?;

    // Removing the first source retracts its copies; j stays tagged by src2.
    c.execute(
        "DELETE FROM metastore.classifications WHERE tenant_id = 'acme' AND tag = 'PII' AND source = 'direct' \
         AND asset_guid = (SELECT guid FROM metastore.assets WHERE tenant_id = 'acme' AND qualified_name = 'src1')",
        &[],
    )
    .await?;
    wait_propagated(
        &c,
        "acme",
        "PII",
        &set(&["j<-src2"]),
        "retraction of src1's copies",
    )
    .await?;

    // Tag src1 again, then block PII on a -> b: b, c and the cycle lose it.
    tag(&c, "acme", "src1", "PII").await?;
    wait_propagated(&c, "acme", "PII", &set(&both), "PII from src1 again").await?;
    c.execute(
        "UPDATE metastore.lineage_edges e SET blocked_tags = '{PII}' FROM metastore.assets u, metastore.assets d \
         WHERE e.upstream_guid = u.guid AND e.downstream_guid = d.guid AND u.qualified_name = 'a' AND d.qualified_name = 'b' AND e.tenant_id = 'acme'",
        &[],
    )
    .await?;
    let blocked = ["a<-src1", "d1<-src1", "d2<-src1", "j<-src1", "j<-src2"];
    wait_propagated(&c, "acme", "PII", &set(&blocked), "the blocked edge").await?;

    // A new edge out of a tagged asset propagates into the new subtree.
    edge(&c, "acme", "j", "newt").await?;
    let mut grown = blocked.to_vec();
    grown.extend(["newt<-src1", "newt<-src2"]);
    wait_propagated(&c, "acme", "PII", &set(&grown), "the new edge").await?;

    // A removed edge retracts what only it carried: d1 loses src1's copy,
    // j keeps it through d2.
    c.execute(
        "DELETE FROM metastore.lineage_edges e USING metastore.assets u, metastore.assets d \
         WHERE e.upstream_guid = u.guid AND e.downstream_guid = d.guid AND u.qualified_name = 'src1' AND d.qualified_name = 'd1' AND e.tenant_id = 'acme'",
        &[],
    )
    .await?;
    let shrunk: Vec<&str> = grown.iter().copied().filter(|s| *s != "d1<-src1").collect();
    wait_propagated(&c, "acme", "PII", &set(&shrunk), "the removed edge").await?;

    // A copy deleted by hand is someone else's change: its origin is
    // re-computed and the copy put back.
    c.execute(
        "DELETE FROM metastore.classifications c USING metastore.assets a \
         WHERE c.asset_guid = a.guid AND a.qualified_name = 'd2' AND c.tenant_id = 'acme' \
         AND c.source = 'propagated' AND c.tag = 'PII'",
        &[],
    )
    .await?;
    wait_propagated(&c, "acme", "PII", &set(&shrunk), "the copy deleted by hand").await?;

    // Nothing ever crossed into the other tenant.
    assert!(propagated(&c, "globex", "PII").await?.is_empty());

    // Re-computing what exists writes nothing: the copies keep their row
    // versions, and no propagated change is streamed again.
    let before = row_versions(&c).await?;
    let passes = |out: &str| out.matches("propagated").count();
    let seen = passes(&lily.output());
    c.execute(
        "UPDATE metastore.classifications SET created_at = now() WHERE tenant_id = 'acme' AND source = 'direct'",
        &[],
    )
    .await?;
    wait_for("a propagation pass after the update", WAIT, || async {
        Ok((passes(&lily.output()) > seen).then_some(()))
    })
    .await?;
    assert_eq!(row_versions(&c).await?, before, "a no-op pass rewrote rows");
    lily.stop().await?;
    Ok(())
}

/// Every propagated classification with its row version.
async fn row_versions(c: &Client) -> anyhow::Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT classification_id::text || ':' || xmin::text FROM metastore.classifications WHERE source = 'propagated' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deprecated_certificate_propagates_and_is_taken_back() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    estate(&c, "acme").await?;
    let lily = env.spawn_lily(&["run"])?;
    wait_streaming(&env, &env.config.replication.slot).await?;

    let deprecated = || async {
        let rows = c
            .query(
                "SELECT a.qualified_name || '<-' || o.qualified_name FROM metastore.propagated_attributes p \
                 JOIN metastore.assets a ON a.guid = p.asset_guid JOIN metastore.assets o ON o.guid = p.propagated_from \
                 WHERE p.attribute = 'certificate' AND p.value = 'deprecated'",
                &[],
            )
            .await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<BTreeSet<_>>(),
        )
    };
    c.execute(
        "UPDATE metastore.assets SET certificate = 'deprecated' WHERE qualified_name = 'b'",
        &[],
    )
    .await?;
    let want = set(&["c<-b", "cy1<-b", "cy2<-b"]);
    wait_for("the deprecation downstream of b", WAIT, || async {
        Ok((deprecated().await? == want).then_some(()))
    })
    .await?;
    // A certificate value the config does not propagate takes it back.
    c.execute(
        "UPDATE metastore.assets SET certificate = 'verified' WHERE qualified_name = 'b'",
        &[],
    )
    .await?;
    wait_for("the deprecation retracted", WAIT, || async {
        Ok(deprecated().await?.is_empty().then_some(()))
    })
    .await?;
    lily.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn propagation_catches_up_on_what_changed_while_stopped() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    estate(&c, "acme").await?;
    // Tagged before Lily ever ran: the start-up pass propagates it.
    tag(&c, "acme", "cy1", "GDPR").await?;
    let lily = env.spawn_lily(&["run"])?;
    wait_propagated(
        &c,
        "acme",
        "GDPR",
        &set(&["c<-cy1", "cy2<-cy1"]),
        "start-up pass",
    )
    .await?;
    lily.stop().await?;
    Ok(())
}

/// A chain of `n` column assets `{prefix}0 -> {prefix}1 -> ...`, in one statement.
async fn chain(c: &Client, tenant: &str, prefix: &str, n: i32) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name) \
         SELECT $1, 'column', $2 || i, $2 || i FROM generate_series(0, $3 - 1) i",
        &[&tenant, &prefix, &n],
    )
    .await?;
    c.execute(
        "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid) \
         SELECT $1, u.guid, d.guid FROM generate_series(0, $3 - 2) i \
         JOIN metastore.assets u ON u.tenant_id = $1 AND u.qualified_name = $2 || i \
         JOIN metastore.assets d ON d.tenant_id = $1 AND d.qualified_name = $2 || (i + 1)",
        &[&tenant, &prefix, &n],
    )
    .await?;
    Ok(())
}

/// Waits until `tenant` has `n` propagated copies of `tag`.
async fn wait_count(c: &Client, tenant: &str, tag: &str, n: usize) -> anyhow::Result<()> {
    wait_for(
        &format!("{n} copies of {tag} in {tenant}"),
        WAIT,
        || async { Ok((propagated(c, tenant, tag).await?.len() == n).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runaway_chain_becomes_an_error_event_and_holds_no_one() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let c = env.client().await?;
    for t in ["a", "b"] {
        c.execute(
            "INSERT INTO metastore.tenants (tenant_id, name) VALUES ($1, $1)",
            &[&t],
        )
        .await?;
    }
    // Tenant a: a 5,000-hop chain; tenant b: a short one.
    chain(&c, "a", "long", 5_000).await?;
    chain(&c, "b", "short", 5).await?;
    let lily = env.spawn_lily_with(
        &["run"],
        &[("LILY_PROPAGATION__MAX_DEPTH".into(), "100".into())],
    )?;
    wait_streaming(&env, "lily").await?;

    tag(&c, "a", "long0", "PII").await?;
    tag(&c, "b", "short0", "PII").await?;
    // b's tag reaches its whole chain although a's is held.
    wait_count(&c, "b", "PII", 4).await?;
    let letter = wait_for("the dead letter of the held origin", WAIT, || async {
        Ok(c.query_opt(
            "SELECT tenant_id, error_code, error, details->>'tag', details->>'origin' \
             FROM lily.dead_letters WHERE source = 'propagation'",
            &[],
        )
        .await?)
    })
    .await?;
    assert_eq!(letter.get::<_, String>(0), "a");
    assert_eq!(letter.get::<_, String>(1), "lineage_too_deep");
    let error: String = letter.get(2);
    assert!(error.contains("propagation.max_depth = 100"), "{error}");
    assert_eq!(letter.get::<_, String>(3), "PII");
    assert_eq!(letter.get::<_, String>(4), "long0");
    assert!(
        propagated(&c, "a", "PII").await?.is_empty(),
        "the held origin propagated nothing"
    );
    // The stream goes on for every tenant: a later tag of b propagates.
    tag(&c, "b", "short2", "GDPR").await?;
    wait_count(&c, "b", "GDPR", 2).await?;
    // Cutting the chain brings a's origin within bounds: it propagates.
    c.execute(
        "DELETE FROM metastore.lineage_edges e USING metastore.assets u \
         WHERE e.upstream_guid = u.guid AND u.qualified_name = 'long50'",
        &[],
    )
    .await?;
    wait_count(&c, "a", "PII", 50).await?;
    let out = lily.output();
    assert!(out.contains("was not propagated"), "{out}");
    lily.stop().await?;
    Ok(())
}
