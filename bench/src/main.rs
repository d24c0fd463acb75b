//! `lily-bench`: measures the CDC core and the Delta store on a private
//! PostgreSQL cluster and prints the figures. Not a test: nothing fails on a
//! number; the figures are for people.
//!
//! Reader throughput is measured side by side with `pg_recvlogical` draining
//! the same backlog with the same pgoutput options from a slot of its own,
//! created at the same position, runs alternating so neither gets a warmer
//! cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use lily_cdc::sink::{DeadLetters, FlushPolicy, Sink, SinkError, SinkRunner};
use lily_cdc::wire::ConnectParams;
use lily_cdc::{
    AckTracker, ChangeBatch, ChangeReader, Lsn, ReaderConfig, SnapshotState, StartPlan,
};
use lily_embedded::{ClusterBuilder, PgCluster};
use lily_lakehouse::{AuditSink, LakeLocation};
use lily_sinks::NullSink;
use tokio::sync::{mpsc, watch};

mod bulk;
mod enforcement;
mod outbound;
mod propagation;
mod sql;
mod webhooks;

const DB: &str = "bench";

/// The latency at percentile `p` (0 to 1, nearest rank) of `sorted`, in
/// milliseconds; 0 when there is none.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Lily's benchmarks.
#[derive(Debug, Parser)]
struct Args {
    /// Rows in the replication backlog.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Rows per transaction in the backlog.
    #[arg(long, default_value_t = 10_000)]
    tx_rows: i64,
    /// Alternating rounds of reader vs pg_recvlogical.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Steady change rate for the latency run (changes per second).
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds of steady load for the latency run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Skip the peak-RSS run of `lily run` over one transaction of --rows rows.
    #[arg(long)]
    skip_memory: bool,
    /// Skip the reader-vs-pg_recvlogical and Delta throughput runs.
    #[arg(long)]
    skip_throughput: bool,
    /// Skip the steady-rate latency run.
    #[arg(long)]
    skip_latency: bool,
    /// Run only the propagation benchmark.
    #[arg(long)]
    propagation: bool,
    /// Propagation: assets downstream of the tagged root.
    #[arg(long, default_value_t = 100_000)]
    closure: i64,
    /// Propagation: lineage edges in the whole graph (about).
    #[arg(long, default_value_t = 1_000_000)]
    edges: i64,
    /// Run only the Monte Carlo webhook benchmark (for --seconds each side).
    #[arg(long)]
    webhooks: bool,
    /// Webhooks: concurrent senders.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Webhooks: run `lily run` without its search sink. Its Elasticsearch
    /// stand-in is a Python server on the same cores, which a production
    /// search cluster is not; this shows what the inbound path itself takes.
    #[arg(long)]
    without_search: bool,
    /// Run only the search and Kafka sink benchmark (backlog of --docs
    /// assets, then --rate changes/s for --seconds).
    #[arg(long)]
    outbound: bool,
    /// Outbound: assets in the backlog.
    #[arg(long, default_value_t = 200_000)]
    docs: i64,
    /// Run only the SQL endpoint benchmark: tag to enforcement, and query
    /// overhead against the same queries unmasked and on PostgreSQL directly.
    #[arg(long)]
    sql: bool,
    /// SQL: rows of the scanned table.
    #[arg(long, default_value_t = 1_000_000)]
    sql_rows: i64,
    /// SQL: tags timed, each way (direct and upstream).
    #[arg(long, default_value_t = 50)]
    tags: usize,
    /// SQL: assets downstream of the upstream tag.
    #[arg(long, default_value_t = 10_000)]
    sql_closure: i64,
    /// Run only the enforcement points benchmark: tag to enforced for
    /// Trino's OPA decisions, a downstream PostgreSQL's masking views and
    /// policy events on Kafka (--tags each way), and OPA decisions per
    /// second (--concurrency clients, --seconds each).
    #[arg(long)]
    enforcement: bool,
    /// Run only the bulk-load benchmark: `lily ingest` of --assets assets
    /// beside a binary COPY of the same rows.
    #[arg(long)]
    bulk: bool,
    /// Bulk: assets in the estate (10% containers, 90% columns).
    #[arg(long, default_value_t = 1_000_000)]
    assets: i64,
    /// Bulk: records per transaction of `lily ingest`.
    #[arg(long, default_value_t = 5_000)]
    chunk: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("lily-bench-").tempdir()?;
    let cluster = ClusterBuilder::new(dir.path().join("pg"))
        .setting("shared_buffers", "512MB")
        .setting("max_wal_size", "4GB")
        .start()
        .await?;
    cluster.create_database(DB).await?;
    let mut client = cluster.connect(DB).await?;
    let opts = lily_metastore::SetupOptions {
        slot: "lily".into(),
        publication: "lily_metastore".into(),
        tenant_role: "lily_tenant".into(),
    };
    lily_metastore::setup(&mut client, &opts).await?;
    client
        .batch_execute("INSERT INTO metastore.tenants (tenant_id, name) VALUES ('bench', 'Bench')")
        .await?;

    if args.bulk {
        return bulk::run(&cluster, dir.path(), args.assets, args.chunk).await;
    }
    if args.enforcement {
        return enforcement::run(
            &cluster,
            dir.path(),
            args.tags,
            args.seconds,
            args.concurrency,
        )
        .await;
    }
    if args.sql {
        return sql::run(
            &cluster,
            dir.path(),
            args.sql_rows,
            args.tags,
            args.sql_closure,
            args.rounds.max(3),
        )
        .await;
    }
    if args.outbound {
        return outbound::run(&cluster, dir.path(), args.docs, args.rate, args.seconds).await;
    }
    if args.webhooks {
        return webhooks::run(
            &cluster,
            dir.path(),
            args.seconds,
            args.concurrency,
            !args.without_search,
        )
        .await;
    }
    if args.propagation {
        return propagation::run(
            &cluster,
            &dir.path().join("lake-propagation"),
            args.closure,
            args.edges,
            args.rounds,
        )
        .await;
    }

    // Slots first, then the backlog: every slot sees exactly the same changes.
    let mut slots = Vec::new();
    for r in 0..args.rounds {
        for kind in ["recv", "ours"] {
            let name = format!("{kind}_{r}");
            resumable_slot(&client, &name).await?;
            slots.push(name);
        }
    }
    resumable_slot(&client, "lake").await?;
    // The memory run alone needs no backlog (its `lily run` would snapshot it).
    let backlog = if args.skip_throughput && args.skip_latency {
        0
    } else {
        args.rows
    };
    println!(
        "loading a backlog of {backlog} rows in transactions of {} ...",
        args.tx_rows
    );
    let mut start = 1;
    while start <= backlog {
        let end = (start + args.tx_rows - 1).min(backlog);
        client
            .execute(
                "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, attributes, owners, description)
                 SELECT 'bench', 'column', 'b.' || g, 'col' || g, jsonb_build_object('n', g, 'kind', 'metric'),
                        ARRAY['owner' || (g % 13)], 'a column of a benchmark table'
                 FROM generate_series($1::bigint, $2::bigint) g",
                &[&start, &end],
            )
            .await?;
        start = end + 1;
    }
    let end_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end_lsn.parse()?;
    client.execute("CHECKPOINT", &[]).await?;

    let lake_dir = dir.path().join("lake");
    let location = LakeLocation::parse(lake_dir.to_str().unwrap_or_default(), Default::default())?;
    if !args.skip_throughput {
        throughput(&args, &cluster, end, &end_lsn, &location).await?;
    }
    if !args.skip_latency {
        // The lake settings of `lily run` (LILY_LAKE__* variables apply).
        let lake = lily_config::LilyConfig::load(None)?.lake;
        println!(
            "\n== commit-to-Delta-commit latency at a steady {} changes/s for {} s (lake flush every {} ms) ==",
            args.rate, args.seconds, lake.flush_interval_ms
        );
        let (p50, p99, n) = steady_latency(&cluster, &location, args.rate, args.seconds).await?;
        println!(
            "  {n} changes: p50 {:.1} ms, p99 {:.1} ms",
            p50 * 1e3,
            p99 * 1e3
        );
    }
    if !args.skip_memory {
        println!(
            "\n== peak RSS of `lily run` over one transaction of {} rows ==",
            args.rows
        );
        let peak = one_transaction_rss(&cluster, dir.path().join("lake-rss"), args.rows).await?;
        println!("  peak RSS {} MiB   (target < 512 MiB)", peak >> 20);
    }
    Ok(())
}

async fn throughput(
    args: &Args,
    cluster: &PgCluster,
    end: Lsn,
    end_lsn: &str,
    location: &LakeLocation,
) -> anyhow::Result<()> {
    println!("\n== slot reader vs pg_recvlogical, same backlog, same pgoutput options ==");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for r in 0..args.rounds {
        let t = recvlogical(cluster, &format!("recv_{r}"), end_lsn)?;
        let rows_per_s = args.rows as f64 / t.as_secs_f64();
        println!(
            "  pg_recvlogical  round {r}: {:>8.2} s  {:>10.0} rows/s",
            t.as_secs_f64(),
            rows_per_s
        );
        theirs.push(rows_per_s);
        let (t, rows) = drain(
            cluster,
            &format!("ours_{r}"),
            end,
            Box::new(NullSink::default()),
        )
        .await?;
        let rows_per_s = rows as f64 / t.as_secs_f64();
        println!(
            "  lily reader     round {r}: {:>8.2} s  {:>10.0} rows/s  ({rows} rows into Arrow batches)",
            t.as_secs_f64(),
            rows_per_s
        );
        ours.push(rows_per_s);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "  ratio (best lily / best pg_recvlogical): {:.2}   (target >= 0.90)",
        best(&ours) / best(&theirs)
    );

    println!("\n== into the Delta audit store ==");
    let audit = AuditSink::open(location).await?;
    let (t, rows) = drain(cluster, "lake", end, Box::new(audit)).await?;
    println!(
        "  {rows} rows in {:.2} s: {:.0} rows/s into Delta",
        t.as_secs_f64(),
        rows as f64 / t.as_secs_f64()
    );
    Ok(())
}

/// Creates a pgoutput slot at the current position, marked as needing no
/// snapshot, so a reader resumes from it and sees exactly what follows.
async fn resumable_slot(client: &tokio_postgres::Client, name: &str) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await?;
    SnapshotState::Delivered { at: None }
        .save(client, name)
        .await?;
    Ok(())
}

fn recvlogical(cluster: &PgCluster, slot: &str, end: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = std::process::Command::new("pg_recvlogical")
        .args([
            "-d",
            &cluster.url(DB),
            "--slot",
            slot,
            "--start",
            "--endpos",
            end,
            "-f",
            "/dev/null",
            "--no-loop",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=lily_metastore",
            "-o",
            "binary=true",
            "-o",
            "messages=true",
        ])
        .status()
        .context("running pg_recvlogical (Debian package postgresql-client-15)")?;
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    Ok(started.elapsed())
}

/// Streams `slot` into `sink` until everything up to `end` is confirmed.
async fn drain(
    cluster: &PgCluster,
    slot: &str,
    end: Lsn,
    sink: Box<dyn Sink>,
) -> anyhow::Result<(Duration, u64)> {
    // The lake settings of `lily run` (LILY_LAKE__* variables apply).
    let lake = lily_config::LilyConfig::load(None)?.lake;
    let params = ConnectParams::parse(&cluster.url(DB))?;
    let client = Arc::new(cluster.connect(DB).await?);
    let config = ReaderConfig {
        slot: slot.into(),
        heartbeat_interval: Duration::ZERO,
        status_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let acks = AckTracker::new();
    let (tx, mut rx) = mpsc::channel::<Arc<ChangeBatch>>(16);
    let (sink_tx, sink_rx) = mpsc::channel::<Arc<ChangeBatch>>(16);
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c2 = counted.clone();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            c2.fetch_add(b.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
            if sink_tx.send(b).await.is_err() {
                return;
            }
        }
    });
    let (abort_tx, abort_rx) = watch::channel(false);
    let runner = SinkRunner::new(
        sink,
        acks.register_sink("bench"),
        FlushPolicy {
            max_rows: lake.flush_max_rows,
            max_wait: Duration::from_millis(lake.flush_interval_ms),
        },
        // Nothing is refused here; the store is opened only if something is.
        DeadLetters::connect(&cluster.url(DB), 1)?,
        "bench",
    );
    let sink_task = tokio::spawn(runner.run(sink_rx, abort_rx));
    let reader = ChangeReader::new(params, client, config, acks.clone(), tx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(reader.run(StartPlan::Resume { from: Lsn::ZERO }, stop_rx));
    while acks.confirmed() < end {
        if task.is_finished() {
            bail!("reader stopped early: {:?}", task.await?);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    task.await??;
    let _ = abort_tx.send(false);
    let _ = sink_task.await;
    Ok((elapsed, counted.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Wraps a sink and records, for every row, the time from its commit to the
/// flush that made it durable.
struct LatencyProbe {
    inner: Box<dyn Sink>,
    pending: Vec<i64>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub(crate) fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Sink for LatencyProbe {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        use arrow::array::AsArray;
        if let Some(t) = batch.records.column_by_name(lily_cdc::batch::COMMIT_TIME) {
            self.pending.extend(
                t.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .values()
                    .iter(),
            );
        }
        self.inner.write(batch).await
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush().await?;
        let now = now_micros();
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        l.extend(self.pending.drain(..).map(|t| (now - t) as f64 / 1e6));
        Ok(())
    }
    fn buffered_rows(&self) -> usize {
        self.inner.buffered_rows()
    }
    async fn discard_snapshot(&mut self, lsn: Lsn) -> Result<(), SinkError> {
        self.inner.discard_snapshot(lsn).await
    }
}

async fn steady_latency(
    cluster: &PgCluster,
    location: &LakeLocation,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(f64, f64, usize)> {
    let client = cluster.connect(DB).await?;
    resumable_slot(&client, "latency").await?;
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = LatencyProbe {
        inner: Box::new(AuditSink::open(location).await?),
        pending: Vec::new(),
        latencies: latencies.clone(),
    };
    let defaults = lily_config::LilyConfig::load(None)?;
    let params = ConnectParams::parse(&cluster.url(DB))?;
    let config = ReaderConfig {
        slot: "latency".into(),
        heartbeat_interval: Duration::ZERO,
        ..Default::default()
    };
    let acks = AckTracker::new();
    let (tx, rx) = mpsc::channel(16);
    let (abort_tx, abort_rx) = watch::channel(false);
    let policy = FlushPolicy {
        max_rows: defaults.lake.flush_max_rows,
        max_wait: Duration::from_millis(defaults.lake.flush_interval_ms),
    };
    let sink_task = tokio::spawn(
        SinkRunner::new(
            Box::new(probe),
            acks.register_sink("lake"),
            policy,
            DeadLetters::connect(&cluster.url(DB), 1)?,
            "audit",
        )
        .run(rx, abort_rx),
    );
    let reader = ChangeReader::new(
        params,
        Arc::new(cluster.connect(DB).await?),
        config,
        acks.clone(),
        tx,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reader.run(StartPlan::Resume { from: Lsn::ZERO }, stop_rx));

    // 50 transactions a second, each `rate / 50` updates.
    let per_tx = (rate / 50).max(1) as i64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let update = client
        .prepare("UPDATE metastore.assets SET description = 'tick ' || $3::bigint WHERE tenant_id = 'bench' AND qualified_name = ANY(SELECT 'b.' || g FROM generate_series($1::bigint, $2::bigint) g)")
        .await?;
    let ticks = seconds * 50;
    for i in 0..ticks as i64 {
        tick.tick().await;
        let start = 1 + (i * per_tx) % 900_000;
        client
            .execute(&update, &[&start, &(start + per_tx - 1), &i])
            .await?;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end.parse()?;
    while acks.confirmed() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    task.await??;
    let _ = abort_tx.send(false);
    let _ = sink_task.await;
    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok((pct(0.50), pct(0.99), l.len()))
}

async fn one_transaction_rss(cluster: &PgCluster, lake: PathBuf, rows: i64) -> anyhow::Result<u64> {
    let client = cluster.connect(DB).await?;
    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let mut child = std::process::Command::new(&lily)
        .arg("run")
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("LILY_LAKE__ROOT", &lake)
        .env("LILY_METRICS__LISTEN", "")
        .env("LILY_REPLICATION__SLOT", "rss")
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {} (build it with --release too)", lily.display()))?;
    // Wait for its snapshot (of the backlog above) to finish, then commit one big transaction.
    loop {
        let done = client
            .query_opt("SELECT 1 FROM lily.replication_state s JOIN pg_replication_slots r USING (slot_name) WHERE slot_name = 'rss' AND snapshot_done AND r.active", &[])
            .await?;
        if done.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .execute(
            "INSERT INTO metastore.assets (tenant_id, type_name, qualified_name, name, attributes, owners)
             SELECT 'bench', 'column', 'one.' || g, 'c' || g, jsonb_build_object('n', g), ARRAY['o'] FROM generate_series(1, $1::bigint) g",
            &[&rows],
        )
        .await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let mut peak = 0u64;
    loop {
        peak = peak.max(peak_rss(child.id()).unwrap_or(0));
        let confirmed: bool = client
            .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'rss'", &[&end])
            .await?
            .get(0);
        if confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on our own child has no memory effects; SIGTERM asks for a clean stop.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    Ok(peak)
}
