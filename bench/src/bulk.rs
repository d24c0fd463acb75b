//! `lily ingest` of an estate of `--assets` assets in Lily's bulk NDJSON
//! (10% database, schemas and tables, 90% columns, nine per table), beside
//! the physical limit: a binary COPY of the same rows into a table of the
//! same shape and indexes. Prints rows/s of each, their ratio, and the
//! peak RSS of `lily ingest`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lily_embedded::PgCluster;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::DB;

/// One asset of the estate: (type, qualified name, parent, name, data type).
fn estate(assets: i64) -> impl Iterator<Item = (&'static str, String, Option<String>)> {
    let tables = (assets / 10).max(1);
    let schemas = (tables / 100).max(1);
    let db = std::iter::once(("database", "wh".to_owned(), None));
    let schema_rows = (0..schemas).map(|s| ("schema", format!("wh.s{s}"), Some("wh".to_owned())));
    let table_rows = (0..tables).flat_map(move |t| {
        let schema = format!("wh.s{}", t % schemas);
        let table = format!("{schema}.t{t}");
        std::iter::once(("table", table.clone(), Some(schema)))
            .chain((0..9).map(move |c| ("column", format!("{table}.c{c}"), Some(table.clone()))))
    });
    db.chain(schema_rows).chain(table_rows)
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
    for (type_name, q, parent) in estate(assets) {
        let mut line = serde_json::json!({"qualified_name": q, "type": type_name});
        if let Some(p) = parent {
            line["parent"] = p.into();
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
        "\n== bulk load: {rows} assets ({} MiB of NDJSON), 10% containers, 90% columns ==",
        size >> 20
    );

    // Lily: `lily ingest` of the file.
    let lily = std::env::current_exe()?
        .parent()
        .map(|d| d.join("lily"))
        .context("no folder")?;
    let started = Instant::now();
    let status = std::process::Command::new(&lily)
        .args(["ingest", "--tenant", "bench", "--chunk", &chunk.to_string()])
        .arg(&file)
        .env("LILY_POSTGRES__URL", cluster.url(DB))
        .env("RUST_LOG", "warn")
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
    let loaded: i64 = client
        .query_one(
            "SELECT count(*) FROM metastore.assets WHERE tenant_id = 'bench'",
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(loaded == rows, "lily ingest loaded {loaded} of {rows}");

    // Baseline: binary COPY of the same rows into a table of the same
    // shape and indexes (no foreign keys, no parents to resolve).
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
    for (type_name, q, _) in estate(assets) {
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
    let copy_secs = started.elapsed().as_secs_f64();

    let rate = |secs: f64| rows as f64 / secs;
    println!(
        "  lily ingest   {lily_secs:>7.1} s  {:>9.0} assets/s  (--chunk {chunk}; peak RSS {} MiB)",
        rate(lily_secs),
        peak_kib >> 10
    );
    println!(
        "  binary COPY   {copy_secs:>7.1} s  {:>9.0} rows/s",
        rate(copy_secs)
    );
    println!("  ratio (lily / COPY) {:.2}", copy_secs / lily_secs);
    Ok(())
}
