//! The propagation benchmark: a lineage graph of about a million edges, a
//! root whose downstream closure is `closure` assets; time from the commit
//! of a tag on the root until every propagated copy is committed, and back.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_embedded::PgCluster;

use crate::{DB, peak_rss};

/// Builds the graph: the root (asset 0) and its closure 1..=closure as a
/// ten-way tree with a second parent per node (diamonds) and one edge back
/// to the top (a cycle); then `outside` more assets with 8 edges out of each
/// of `edges_out / 8` of them, some pointing into the closure (which does
/// not grow it).
async fn build_graph(
    client: &tokio_postgres::Client,
    closure: i64,
    outside: i64,
    edges_out: i64,
) -> anyhow::Result<i64> {
    let total = closure + outside;
    client
        .execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name)
             SELECT 'bench', 'column', 'n' || g, 'n' || g FROM generate_series(0, $1::bigint) g",
            &[&total],
        )
        .await?;
    client
        .batch_execute(
            "CREATE TEMP TABLE ids AS SELECT substr(qualified_name, 2)::bigint AS n, guid FROM metastore.assets WHERE tenant_id = 'bench';
             CREATE UNIQUE INDEX ON ids (n); ANALYZE ids;",
        )
        .await?;
    // (up, down) pairs by number, then edges by guid.
    client
        .execute(
            "CREATE TEMP TABLE pairs AS
             SELECT (g - 1) / 10 AS up, g AS down FROM generate_series(1, $1::bigint) g
             UNION
             SELECT (g - 1) / 10 + 1, g FROM generate_series(12, $1::bigint) g WHERE (g - 1) / 10 + 1 < g
             UNION
             SELECT $1::bigint, 1
             UNION
             SELECT u, d FROM (
               SELECT $1::bigint + 1 + (k / 8) AS u,
                      CASE WHEN k % 8 = 0 THEN 1 + (k * 7) % $1::bigint
                           ELSE $1::bigint + 1 + (((k / 8) * 31 + (k % 8) * 7919) % $2::bigint) END AS d
               FROM generate_series(0, $3::bigint - 1) k) x
             WHERE u <> d",
            &[&closure, &outside, &edges_out],
        )
        .await?;
    let n = client
        .execute(
            "INSERT INTO metastore.lineage_edges (tenant_id, upstream_guid, downstream_guid)
             SELECT 'bench', u.guid, d.guid FROM pairs p JOIN ids u ON u.n = p.up JOIN ids d ON d.n = p.down
             ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    Ok(n as i64)
}

async fn count_copies(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM metastore.classifications c JOIN ids r ON r.guid = c.propagated_from
             WHERE r.n = 0 AND c.tenant_id = 'bench' AND c.tag = 'PII'",
            &[],
        )
        .await?
        .get(0))
}

/// Polls until the copies of the root's tag number `want`; the time since `since`.
async fn until_copies(
    client: &tokio_postgres::Client,
    want: i64,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(300);
    loop {
        if count_copies(client).await? == want {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "propagation did not finish in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(
    cluster: &PgCluster,
    lake: &Path,
    closure: i64,
    edges: i64,
    rounds: usize,
) -> anyhow::Result<()> {
    let client = cluster.connect(DB).await?;
    let edges_out = (edges - 2 * closure).max(0);
    // Enough assets outside the closure to hold 8 edges out of each.
    let outside = (closure * 3).max(edges_out / 8 + 1).max(1000);
    println!(
        "\n== propagation: tag a root whose closure is {closure} assets, in a graph of ~{edges} edges =="
    );
    let started = Instant::now();
    let n_edges = build_graph(&client, closure, outside, edges_out).await?;
    println!(
        "  graph: {} assets, {n_edges} lineage edges (loaded in {:.1} s)",
        closure + outside + 1,
        started.elapsed().as_secs_f64()
    );

    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-transforms");
    let log = lake.with_extension("log");
    let mut child = std::process::Command::new(&lily)
        .arg("run")
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", lake)
        .env("LILY_METRICS__LISTEN", "")
        .env("LILY_REPLICATION__SLOT", "propagation")
        .env("LILY_TRANSFORMS__DIR", &transforms)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {} (build it with --release too)", lily.display()))?;
    let ready = Instant::now();
    loop {
        let done = client
            .query_opt("SELECT 1 FROM lily.replication_state s JOIN pg_replication_slots r USING (slot_name) WHERE slot_name = 'propagation' AND snapshot_done AND r.active", &[])
            .await?;
        if done.is_some() {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(600),
            "lily run did not finish its snapshot in 600 s; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  lily run: snapshot streamed in {:.1} s, peak RSS so far {} MiB",
        ready.elapsed().as_secs_f64(),
        peak_rss(child.id()).unwrap_or(0) >> 20
    );
    for round in 1..=rounds {
        client
            .execute(
                "INSERT INTO metastore.classifications (tenant_id, asset_guid, tag) SELECT 'bench', guid, 'PII' FROM ids WHERE n = 0",
                &[],
            )
            .await?;
        let committed = Instant::now();
        let tag = until_copies(&client, closure, committed).await?;
        client
            .execute(
                "DELETE FROM metastore.classifications c USING ids r WHERE c.asset_guid = r.guid AND r.n = 0 AND c.source = 'direct'",
                &[],
            )
            .await?;
        let committed = Instant::now();
        let untag = until_copies(&client, 0, committed).await?;
        println!(
            "  round {round}: tag -> {closure} propagated copies committed in {:.0} ms; untag -> all retracted in {:.0} ms",
            tag.as_secs_f64() * 1e3,
            untag.as_secs_f64() * 1e3
        );
    }
    let peak = peak_rss(child.id()).unwrap_or(0);
    // SAFETY: kill(2) on our own child has no memory effects; SIGTERM asks for a clean stop.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    for line in out
        .lines()
        .filter(|l| l.contains(" propagated ") && l.contains("full=false"))
        .take(2 * rounds)
    {
        println!(
            "  lily: {}",
            line.split_once("propagated")
                .map_or(line, |(_, rest)| rest)
                .trim()
        );
    }
    println!(
        "  peak RSS of lily run: {} MiB   (target: closure under 2 s)",
        peak >> 20
    );
    Ok(())
}
