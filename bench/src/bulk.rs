//! `lily ingest` of an estate of `--assets` assets in Lily's bulk NDJSON
//! (10% database, schemas and tables, 90% columns, nine per table; the
//! first two columns of each table read from the previous table's, so
//! there are two lineage edges per table: 2M for 10M assets), beside
//! the physical limit: a binary COPY of the same rows into a table of the
//! same shape and indexes. Prints when the containers are consistent (the
//! command returns; the columns are in the lake), the rows/s of each lane,
//! when `lily run` has promoted every column and streamed every change
//! (consistent everywhere), the peak RSS of both commands, and the ratios
//! against COPY.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lily_embedded::PgCluster;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::DB;

/// One asset of the estate: (type, qualified name, parent, upstream).
type EstateRow = (&'static str, String, Option<String>, Option<String>);

/// The assets of the estate, parents first.
fn estate(assets: i64) -> impl Iterator<Item = EstateRow> {
    let tables = (assets / 10).max(1);
    let schemas = (tables / 100).max(1);
    let table_name = move |t: i64| format!("wh.s{}.t{t}", t % schemas);
    let db = std::iter::once(("database", "wh".to_owned(), None, None));
    let schema_rows =
        (0..schemas).map(|s| ("schema", format!("wh.s{s}"), Some("wh".to_owned()), None));
    let table_rows = (0..tables).flat_map(move |t| {
        let schema = format!("wh.s{}", t % schemas);
        let table = table_name(t);
        let previous = (t > 0).then(|| table_name(t - 1));
        std::iter::once(("table", table.clone(), Some(schema), None)).chain((0..9).map(move |c| {
            let upstream = previous
                .as_ref()
                .filter(|_| c < 2)
                .map(|p| format!("{p}.c{c}"));
            (
                "column",
                format!("{table}.c{c}"),
                Some(table.clone()),
                upstream,
            )
        }))
    });
    db.chain(schema_rows).chain(table_rows)
}

/// A uuid for the baseline's edges, from a name.
fn name_uuid(name: &str) -> uuid::Uuid {
    use std::hash::{BuildHasher, BuildHasherDefault};
    type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    let hi = Fixed::default().hash_one(name);
    let lo = Fixed::default().hash_one((name, 1u8));
    uuid::Uuid::from_u64_pair(hi, lo)
}

fn data_type(qualified: &str) -> &'static str {
    if qualified.ends_with(".c0") {
        "bigint"
    } else {
        "text"
    }
}

/// Runs the load and its baseline and prints the figures.
pub async fn run(cluster: &PgCluster, dir: &Path, assets: i64, chunk: usize) -> anyhow::Result<()> {
    let file = dir.join("estate.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    let mut rows = 0i64;
    let mut edges = 0i64;
    for (type_name, q, parent, upstream) in estate(assets) {
        let mut line = serde_json::json!({"qualified_name": q, "type": type_name});
        if let Some(p) = parent {
            line["parent"] = p.into();
        }
        if let Some(u) = upstream {
            line["upstreams"] = serde_json::json!([u]);
            edges += 1;
        }
        if type_name == "column" {
            line["attributes"] = serde_json::json!({"data_type": data_type(&q)});
        }
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        rows += 1;
    }
    out.flush()?;
    drop(out);
    let size = std::fs::metadata(&file)?.len();
    println!(
        "\n== bulk load: {rows} assets ({} MiB of NDJSON), 10% containers, 90% columns, {edges} lineage edges ==",
        size >> 20
    );

    // Lily: `lily ingest` of the file, then `lily run` until every column
    // is promoted and every change streamed.
    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let lake = dir.join("lake");
    let transforms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql-transforms");
    let envs = [
        ("LILY_POSTGRES__URL", cluster.url(DB)),
        ("LILY_LAKE__ROOT", lake.display().to_string()),
        ("LILY_METRICS__LISTEN", String::new()),
        ("LILY_API__LISTEN", String::new()),
        ("LILY_SQL__LISTEN", String::new()),
        ("LILY_TRANSFORMS__DIR", transforms.display().to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    // `lily run` runs throughout, as in production: it promotes while the
    // load goes on, and `lily ingest` pauses if the backlog fills.
    let mut run = std::process::Command::new(&lily)
        .arg("run")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LILY_PROPAGATION__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("lily-run.log"))?)
        .spawn()?;
    let started = Instant::now();
    let status = std::process::Command::new(&lily)
        .args(["ingest", "--tenant", "bench", "--chunk", &chunk.to_string()])
        .arg(&file)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running lily ingest (build it with --release too)")?;
    let lily_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "lily ingest failed: {status}");
    // The largest child waited for so far: `lily ingest` (the first).
    // SAFETY: getrusage(2) fills the struct it is given.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    };
    let client = cluster.connect(DB).await?;
    let count = |sql: &'static str| {
        let client = &client;
        async move { Ok::<i64, anyhow::Error>(client.query_one(sql, &[]).await?.get(0)) }
    };
    let at_once = count("SELECT count(*) FROM metastore.assets WHERE tenant_id = 'bench'").await?;
    let in_lake = count("SELECT coalesce(sum(rows_lake), 0)::bigint FROM lily.bulk_loads").await?;

    let run_started = started;
    let mut promoted_secs = None;
    let consistent_secs = loop {
        if promoted_secs.is_none()
            && count("SELECT count(*) FROM lily.bulk_loads WHERE state <> 'complete'").await? == 0
        {
            promoted_secs = Some(run_started.elapsed().as_secs_f64());
        }
        if promoted_secs.is_some()
            && count(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'lily'",
            )
            .await?
                < 1024 * 1024
        {
            break run_started.elapsed().as_secs_f64();
        }
        if run_started.elapsed() > std::time::Duration::from_secs(3600) {
            anyhow::bail!("lily run did not catch up in an hour");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let run_peak = crate::peak_rss(run.id()).unwrap_or(0);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGTERM);
    }
    let _ = run.wait();

    // A restart over the whole estate: the catalog state is loaded from
    // the metastore (containers, edges, tags; not the columns), then the
    // slot streams again.
    let mut again = std::process::Command::new(&lily)
        .arg("run")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LILY_PROPAGATION__ENABLED", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("lily-restart.log"))?)
        .spawn()?;
    let restarted = Instant::now();
    let restart_secs = loop {
        let active: bool = client
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'lily'",
                &[],
            )
            .await?
            .get(0);
        if active {
            break restarted.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            restarted.elapsed() < std::time::Duration::from_secs(600),
            "lily run did not stream again within 10 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Let it settle into streaming, then read its high-water mark.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let restart_peak = crate::peak_rss(again.id()).unwrap_or(0);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(again.id() as i32, libc::SIGTERM);
    }
    let _ = again.wait();
    let loaded = count("SELECT count(*) FROM metastore.assets WHERE tenant_id = 'bench'").await?;
    anyhow::ensure!(
        loaded == rows,
        "{loaded} of {rows} assets reached the metastore"
    );
    let linked =
        count("SELECT count(*) FROM metastore.lineage_edges WHERE tenant_id = 'bench'").await?;
    anyhow::ensure!(
        linked == edges,
        "{linked} of {edges} lineage edges reached the metastore"
    );

    // Baseline: binary COPY of the same rows into tables of the same
    // shape and indexes (no foreign keys, no parents or names to resolve).
    client
        .batch_execute(
            "CREATE TABLE public.copy_baseline (LIKE metastore.assets INCLUDING DEFAULTS INCLUDING INDEXES)",
        )
        .await?;
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY public.copy_baseline (tenant_id, type_name, qualified_name, name, attributes) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::JSONB],
    );
    let mut writer = std::pin::pin!(writer);
    let mut links = Vec::new();
    for (type_name, q, _, upstream) in estate(assets) {
        if let Some(u) = upstream {
            links.push((name_uuid(&u), name_uuid(&q)));
        }
        let name = q.rsplit('.').next().unwrap_or(&q).to_owned();
        let attributes = if type_name == "column" {
            serde_json::json!({"data_type": data_type(&q)})
        } else {
            serde_json::json!({})
        };
        writer
            .as_mut()
            .write(&[
                &"bench",
                &type_name,
                &q.as_str(),
                &name.as_str(),
                &attributes,
            ])
            .await?;
    }
    writer.as_mut().finish().await?;
    client
        .batch_execute(
            "CREATE TABLE public.copy_edges (LIKE metastore.lineage_edges INCLUDING DEFAULTS INCLUDING INDEXES)",
        )
        .await?;
    let sink = client
        .copy_in(
            "COPY public.copy_edges (tenant_id, upstream_guid, downstream_guid) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::UUID, Type::UUID]);
    let mut writer = std::pin::pin!(writer);
    for (u, d) in &links {
        writer.as_mut().write(&[&"bench", u, d]).await?;
    }
    writer.as_mut().finish().await?;
    let copy_secs = started.elapsed().as_secs_f64();

    let rate = |n: i64, secs: f64| n as f64 / secs;
    let promoted = promoted_secs.unwrap_or(consistent_secs);
    println!(
        "  lily ingest returns       {lily_secs:>7.1} s  {:>9.0} rows/s  (--chunk {chunk}; peak RSS {} MiB)",
        rate(rows, lily_secs),
        peak_kib >> 10
    );
    println!(
        "    then: {} assets consistent (the containers, and the columns with lineage), {in_lake} columns in the lake ({at_once} assets in the metastore, promotion included)",
        rows - in_lake
    );
    println!(
        "  every column promoted     {promoted:>7.1} s  {:>9.0} rows/s",
        rate(rows, promoted)
    );
    println!(
        "  every change streamed     {consistent_secs:>7.1} s  {:>9.0} rows/s  (lily run, peak RSS {} MiB)",
        rate(rows, consistent_secs),
        run_peak >> 20
    );
    println!(
        "  lily run restarted        {restart_secs:>7.1} s  until streaming again (catalog state loaded; peak RSS {} MiB)",
        restart_peak >> 20
    );
    println!(
        "  binary COPY               {copy_secs:>7.1} s  {:>9.0} rows/s",
        rate(rows, copy_secs)
    );
    println!(
        "  ratio to COPY: lily ingest {:.2}, consistent everywhere {:.2}",
        copy_secs / lily_secs,
        copy_secs / consistent_secs
    );
    Ok(())
}
