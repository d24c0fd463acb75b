//! `lily ingest FILE...`: loads files into a tenant's catalog in chunks,
//! each one set-based transaction: the output of DataHub's `file` sink (a
//! JSON array of proposals and snapshots) and Lily's own bulk format, as
//! NDJSON (one asset per line, `inbound/schemas/bulk-asset.v1.json`) or as
//! Parquet (one asset per row, the same fields as columns). Files are read
//! as a stream on a thread of their own, a few chunks ahead of the writes,
//! so memory does not grow with the file. A line or record that cannot be
//! read is kept as a dead letter naming its position, and the load goes on.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lily_config::LilyConfig;
use lily_inbound::bulk::{self, LakeLane, Loader, Outcome, Unreadable, loads};
use lily_inbound::db::Metastore;
use lily_inbound::schemas::Schemas;
use lily_inbound::sources::datahub::{self, Records};
use lily_lakehouse::CatalogAssets;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::mpsc;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// DataHub's `file` sink: one JSON array.
    DataHub,
    /// Lily's bulk format: one asset per line.
    Ndjson,
    /// Lily's bulk format as Parquet: one asset per row.
    Parquet,
}

/// A chunk of records read from a file: each with its position, and the
/// lines that are not JSON at all.
struct Chunk {
    /// (position in the load, where, record).
    records: Vec<(i64, String, Value)>,
    /// (position, where, text, why).
    unreadable: Vec<(i64, String, String, String)>,
}

/// Loads `files` into `tenant`, `chunk` records per transaction.
pub async fn run(
    config: &LilyConfig,
    tenant: &str,
    files: &[PathBuf],
    chunk: usize,
) -> anyhow::Result<()> {
    let db = crate::dlq::own_metastore(config, 2)?;
    anyhow::ensure!(
        db.tenant_exists(tenant).await?,
        "tenant {tenant:?} does not exist"
    );
    let schemas = Schemas::compile()?;
    let lane = LakeLane {
        location: if config.bulk.lake_lane {
            Some(lily_sinks::builtin::lake_location(config)?)
        } else {
            None
        },
        max_backlog: config.bulk.max_backlog_rows,
    };
    let mut total = Outcome::default();
    for path in files {
        let outcome = load(&db, &schemas, tenant, path, chunk.max(1), &lane)
            .await
            .with_context(|| format!("loading {}", path.display()))?;
        total += &outcome;
    }
    let a = &total.applied;
    println!(
        "{} records: {} assets created, {} updated, {} removed, {} lineage edges added, {} classifications added, {} skipped",
        total.records + total.skipped + total.dead_letters,
        a.created,
        a.updated,
        a.removed,
        a.edges_added,
        a.tags_added,
        total.skipped
    );
    if total.dead_letters > 0 {
        eprintln!(
            "{} records could not be read and were kept as dead letters: lily dlq list --tenant {tenant}",
            total.dead_letters
        );
    }
    Ok(())
}

/// `lily status`: every load (or one tenant's), its lanes and its lag.
pub async fn status(
    config: &LilyConfig,
    tenant: Option<&str>,
    load: Option<&str>,
) -> anyhow::Result<()> {
    let db = crate::dlq::own_metastore(config, 1)?;
    let all = loads::list(&db, tenant).await?;
    if all.is_empty() {
        println!("no bulk loads");
        return Ok(());
    }
    println!(
        "{:<10} {:<16} {:<10} {:<9} {:>12} {:>12} {:>12} {:>12} {:>10}  source",
        "tenant",
        "load",
        "state",
        "consist.",
        "metastore",
        "lake",
        "promoted",
        "backlog",
        "watermark"
    );
    for l in &all {
        println!(
            "{:<10} {:<16} {:<10} {:<9} {:>12} {:>12} {:>12} {:>12} {:>10}  {}",
            l.tenant_id,
            l.load_id,
            l.state,
            l.consistency(),
            l.rows_metastore,
            l.rows_lake,
            l.promoted_rows,
            l.backlog(),
            l.promoted_seq,
            l.source
        );
    }
    let Some(load) = load else {
        return Ok(());
    };
    let Some(l) = all.iter().find(|l| l.load_id == load) else {
        anyhow::bail!("no load {load}");
    };
    let mut lake = CatalogAssets::open(&lily_sinks::builtin::lake_location(config)?).await?;
    println!(
        "\n{:<60} {:>10} {:>10}  state",
        "table", "in lake", "promoted"
    );
    for (table, total, promoted) in lake.parents(&l.tenant_id, load, l.promoted_seq).await? {
        let state = loads::table_state(total, promoted);
        println!("{table:<60} {total:>10} {promoted:>10}  {state}");
    }
    Ok(())
}

/// Whether the file is Parquet, a JSON array (DataHub's) or NDJSON.
fn sniff(path: &Path) -> anyhow::Result<Format> {
    let mut magic = [0u8; 4];
    if File::open(path)?.read_exact(&mut magic).is_ok() && &magic == b"PAR1" {
        return Ok(Format::Parquet);
    }
    let mut file = BufReader::new(File::open(path)?);
    loop {
        let buf = file.fill_buf()?;
        let Some(&first) = buf.iter().find(|b| !b.is_ascii_whitespace()) else {
            if buf.is_empty() {
                return Ok(Format::Ndjson);
            }
            let n = buf.len();
            file.consume(n);
            continue;
        };
        return Ok(if first == b'[' {
            Format::DataHub
        } else {
            Format::Ndjson
        });
    }
}

async fn load(
    db: &Metastore,
    schemas: &Schemas,
    tenant: &str,
    path: &Path,
    chunk: usize,
    lane: &LakeLane,
) -> anyhow::Result<Outcome> {
    let format = sniff(path)?;
    let size = std::fs::metadata(path)?.len();
    let read = Arc::new(AtomicU64::new(0));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    // Two chunks ahead at most: the reader waits for the writes.
    let (tx, mut rx) = mpsc::channel::<Chunk>(2);
    let reader = {
        let (path, read, name) = (path.to_owned(), read.clone(), name.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let file = Counting {
                inner: File::open(&path)?,
                read,
            };
            match format {
                Format::DataHub => read_array(BufReader::new(file), &name, chunk, &tx),
                Format::Ndjson => read_lines(BufReader::new(file), &name, chunk, &tx),
                Format::Parquet => read_parquet(file, &name, chunk, &tx),
            }
        })
    };
    let mut progress = Progress::new(&name, size, read);
    let load_id = load_id(tenant, path)?;
    let source = path.display().to_string();
    // DataHub records go to the metastore (their plan spans records).
    let mut loader = match format {
        Format::DataHub => {
            let lane = LakeLane {
                location: None,
                max_backlog: lane.max_backlog,
            };
            Loader::begin(db, tenant, &load_id, &source, &lane).await?
        }
        Format::Ndjson | Format::Parquet => {
            Loader::begin(db, tenant, &load_id, &source, lane).await?
        }
    };
    let mut total = Outcome::default();
    let mut datahub_rows = 0i64;
    while let Some(c) = rx.recv().await {
        let n = (c.records.len() + c.unreadable.len()) as u64;
        let outcome = match format {
            Format::DataHub => {
                datahub_rows += c.records.len() as i64;
                let records = c.records.into_iter().map(|(_, p, v)| (p, v)).collect();
                let mut o = datahub::ingest(db, tenant, Records::File(records), true).await?;
                o.dead_letters +=
                    dead_lines(db, tenant, datahub::DEAD_LETTER_SOURCE, &c.unreadable).await?;
                loads::progress(db, tenant, &load_id, datahub_rows, 0, 0).await?;
                o
            }
            Format::Ndjson | Format::Parquet => {
                loader
                    .write(schemas, c.records, c.unreadable, |backlog| {
                        progress.note(&format!(
                            "paused: {backlog} rows wait for `lily run` to promote them (bulk.max_backlog_rows = {})",
                            lane.max_backlog
                        ))
                    })
                    .await?
            }
        };
        total += &outcome;
        progress.advance(n);
    }
    let (rows_metastore, rows_lake) = loader.rows();
    reader.await.context("the file reader")??;
    loader.finish().await?;
    progress.finish();
    if rows_lake > 0 {
        println!(
            "{name}: {rows_metastore} assets in the metastore, {rows_lake} columns and fields in the lake \
             (load {load_id}; `lily status` shows their promotion)"
        );
    }
    Ok(total)
}

/// A load's id: the tenant and the file's identity (path, size, time of
/// change), so a rerun of the same file resumes the same load.
fn load_id(tenant: &str, path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let digest = sha2::Sha256::digest(format!(
        "{tenant}\n{}\n{}\n{modified}",
        canonical.display(),
        meta.len()
    ));
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Dead letters for lines that were not JSON at all (a DataHub file has
/// none: its array is parsed as a whole).
async fn dead_lines(
    db: &Metastore,
    tenant: &str,
    source: &'static str,
    lines: &[(i64, String, String, String)],
) -> anyhow::Result<u64> {
    if lines.is_empty() {
        return Ok(0);
    }
    let unreadable = lines
        .iter()
        .map(|(_, p, _, e)| Unreadable {
            position: p.clone(),
            error: e.clone(),
        })
        .collect();
    let raw: Vec<(String, Value)> = lines
        .iter()
        .map(|(_, p, l, _)| (p.clone(), Value::String(l.clone())))
        .collect();
    let o = bulk::write(db, tenant, source, Default::default(), unreadable, &raw).await?;
    Ok(o.dead_letters)
}

/// NDJSON, `chunk` lines at a time; a line that is not JSON is kept with
/// its text and why.
fn read_lines(
    file: impl BufRead,
    name: &str,
    chunk: usize,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut current = Chunk {
        records: Vec::with_capacity(chunk),
        unreadable: Vec::new(),
    };
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let seq = i as i64 + 1;
        let position = format!("{name}:{seq}");
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => current.records.push((seq, position, v)),
            Err(e) => current
                .unreadable
                .push((seq, position, line, format!("not JSON: {e}"))),
        }
        if current.records.len() + current.unreadable.len() >= chunk {
            let full = std::mem::replace(
                &mut current,
                Chunk {
                    records: Vec::with_capacity(chunk),
                    unreadable: Vec::new(),
                },
            );
            if tx.blocking_send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !current.records.is_empty() || !current.unreadable.is_empty() {
        let _ = tx.blocking_send(current);
    }
    Ok(())
}

/// Parquet, `chunk` rows at a time, each row as the JSON object of the
/// bulk format: columns are its fields, lists are arrays, and
/// `attributes` may be a struct, a map or JSON text. A row is positioned
/// `file:row N`.
fn read_parquet(
    file: Counting<File>,
    name: &str,
    chunk: usize,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let Counting { inner, read } = file;
    let size = inner.metadata()?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(inner)
        .with_context(|| format!("{name} is not a Parquet file"))?;
    let total = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let reader = builder
        .with_batch_size(chunk)
        .build()
        .with_context(|| format!("reading {name}"))?;
    let mut seq = 0i64;
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {name}"))?;
        let mut json = Vec::new();
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
            writer
                .write(&batch)
                .with_context(|| format!("{name}: a row group that JSON cannot hold"))?;
            writer.finish()?;
        }
        let mut current = Chunk {
            records: Vec::with_capacity(batch.num_rows()),
            unreadable: Vec::new(),
        };
        for line in json.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            seq += 1;
            let position = format!("{name}:row {seq}");
            match serde_json::from_slice::<Value>(line) {
                Ok(mut v) => {
                    // Attributes as JSON text: the object it holds.
                    if let Some(text) = v.get("attributes").and_then(Value::as_str)
                        && let Ok(object) = serde_json::from_str::<Value>(text)
                    {
                        v["attributes"] = object;
                    }
                    current.records.push((seq, position, v));
                }
                Err(e) => current.unreadable.push((
                    seq,
                    position,
                    String::from_utf8_lossy(line).into_owned(),
                    format!("not JSON: {e}"),
                )),
            }
        }
        read.store(size * seq as u64 / total, Ordering::Relaxed);
        if tx.blocking_send(current).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A JSON array, element by element, `chunk` at a time (never the whole
/// array in memory).
fn read_array(
    file: impl Read,
    name: &str,
    chunk: usize,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    struct Elements<'a> {
        name: &'a str,
        chunk: usize,
        tx: &'a mpsc::Sender<Chunk>,
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of DataHub records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut records = Vec::with_capacity(self.chunk);
            let mut n = 0usize;
            while let Some(v) = seq.next_element::<Value>()? {
                n += 1;
                records.push((n as i64, format!("{} record {n}", self.name), v));
                if records.len() >= self.chunk {
                    let full = std::mem::replace(&mut records, Vec::with_capacity(self.chunk));
                    let chunk = Chunk {
                        records: full,
                        unreadable: Vec::new(),
                    };
                    if self.tx.blocking_send(chunk).is_err() {
                        return Ok(());
                    }
                }
            }
            if !records.is_empty() {
                let _ = self.tx.blocking_send(Chunk {
                    records,
                    unreadable: Vec::new(),
                });
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_reader(file);
    de.deserialize_seq(Elements { name, chunk, tx })
        .map_err(|e| anyhow::anyhow!("{name} is not a JSON array of records: {e}"))?;
    Ok(())
}

/// A reader that counts the bytes it has read, for the progress line.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Records, records/s and the ETA by bytes read: redrawn in place on a
/// terminal, a plain line every ten seconds otherwise.
struct Progress {
    name: String,
    size: u64,
    read: Arc<AtomicU64>,
    records: u64,
    started: Instant,
    shown: Instant,
    tty: bool,
}

impl Progress {
    fn new(name: &str, size: u64, read: Arc<AtomicU64>) -> Self {
        let now = Instant::now();
        Self {
            name: name.to_owned(),
            size,
            read,
            records: 0,
            started: now,
            shown: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.records += n;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.shown.elapsed() >= every {
            self.shown = Instant::now();
            self.draw(false);
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.records as f64 / secs;
        let read = self.read.load(Ordering::Relaxed).min(self.size);
        let fraction = if self.size == 0 {
            1.0
        } else {
            read as f64 / self.size as f64
        };
        let eta = if fraction > 0.0 && fraction < 1.0 {
            let left = secs * (1.0 - fraction) / fraction;
            format!("ETA {}:{:02}", left as u64 / 60, left as u64 % 60)
        } else {
            format!("{secs:.1} s")
        };
        format!(
            "{}  {} records  {:.0}/s  {:.0}%  {eta}",
            self.name,
            self.records,
            rate,
            fraction * 100.0
        )
    }

    fn draw(&self, last: bool) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", self.line());
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{}", self.line());
        }
        let _ = err.flush();
    }

    /// A line of its own above the progress line.
    fn note(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            writeln!(err, "\r\x1b[2K{text}")
        } else {
            writeln!(err, "{text}")
        };
    }

    fn finish(&mut self) {
        self.draw(true);
    }
}
