//! `lily ingest FILE...`: loads files into a tenant's catalog in chunks,
//! each one set-based transaction: the output of DataHub's `file` sink (a
//! JSON array of proposals and snapshots) and Lily's own bulk NDJSON (one
//! asset per line, `inbound/schemas/bulk-asset.v1.json`). Files are read
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
use lily_inbound::bulk::{self, Outcome, Unreadable, loads};
use lily_inbound::db::Metastore;
use lily_inbound::schemas::Schemas;
use lily_inbound::sources::datahub::{self, Records};
use lily_lakehouse::{CatalogAssets, LakeAsset, LakeLocation};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use tokio::sync::mpsc;

/// The dead-letter source of bulk NDJSON lines.
const BULK_SOURCE: &str = "bulk";

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// DataHub's `file` sink: one JSON array.
    DataHub,
    /// Lily's bulk format: one asset per line.
    Ndjson,
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
    let lane = Lane {
        lake: if config.bulk.lake_lane {
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
        add(&mut total, &outcome);
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
    for l in all {
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
    let Some(l) = loads::list(&db, tenant)
        .await?
        .into_iter()
        .find(|l| l.load_id == load)
    else {
        anyhow::bail!("no load {load}");
    };
    let mut lake = CatalogAssets::open(&lily_sinks::builtin::lake_location(config)?).await?;
    println!(
        "\n{:<60} {:>10} {:>10}  state",
        "table", "in lake", "promoted"
    );
    for (table, total, promoted) in lake.parents(&l.tenant_id, load, l.promoted_seq).await? {
        let state = if promoted >= total {
            "complete"
        } else if promoted > 0 {
            "partial"
        } else {
            "pending"
        };
        println!("{table:<60} {total:>10} {promoted:>10}  {state}");
    }
    Ok(())
}

fn add(total: &mut Outcome, o: &Outcome) {
    total.records += o.records;
    total.skipped += o.skipped;
    total.dead_letters += o.dead_letters;
    let (t, a) = (&mut total.applied, &o.applied);
    t.created += a.created;
    t.updated += a.updated;
    t.edges_added += a.edges_added;
    t.edges_removed += a.edges_removed;
    t.tags_added += a.tags_added;
    t.removed += a.removed;
    t.unresolved += a.unresolved;
}

/// Whether the file is a JSON array (DataHub's) or NDJSON (Lily's).
fn sniff(path: &Path) -> anyhow::Result<Format> {
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

/// Where the lake lane is and how much backlog it may have.
struct Lane {
    /// The lake, when the lake lane is on.
    lake: Option<LakeLocation>,
    /// `bulk.max_backlog_rows`.
    max_backlog: u64,
}

async fn load(
    db: &Metastore,
    schemas: &Schemas,
    tenant: &str,
    path: &Path,
    chunk: usize,
    lane: &Lane,
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
            }
        })
    };
    let mut progress = Progress::new(&name, size, read);
    let load_id = load_id(tenant, path)?;
    loads::begin(db, tenant, &load_id, &path.display().to_string()).await?;
    // The lake lane, and where a load killed before stopped in it: every
    // line up to there is written in both lanes already.
    let mut lake = match (format, &lane.lake) {
        (Format::Ndjson, Some(location)) => Some(CatalogAssets::open(location).await?),
        _ => None,
    };
    let resume = match lake.as_mut() {
        Some(l) => l.last_seq(tenant, &load_id).await?,
        None => 0,
    };
    let (mut rows_metastore, mut rows_lake, mut lake_seq) = (0i64, 0i64, resume);
    let mut paused = false;
    let mut total = Outcome::default();
    while let Some(c) = rx.recv().await {
        let n = (c.records.len() + c.unreadable.len()) as u64;
        let outcome = match format {
            Format::DataHub => {
                rows_metastore += c.records.len() as i64;
                let records = c.records.into_iter().map(|(_, p, v)| (p, v)).collect();
                let mut o = datahub::ingest(db, tenant, Records::File(records), true).await?;
                o.dead_letters +=
                    dead_lines(db, tenant, datahub::DEAD_LETTER_SOURCE, &c.unreadable).await?;
                o
            }
            Format::Ndjson => {
                let mut metastore = Vec::new();
                let mut lake_rows = Vec::new();
                for (seq, position, value) in c.records {
                    let to_lake = lake.is_some() && bulk::ndjson::lake_lane(schemas, &value);
                    if to_lake {
                        rows_lake += 1;
                    } else {
                        rows_metastore += 1;
                    }
                    if seq <= resume {
                        continue;
                    }
                    if to_lake {
                        lake_rows.push(lake_asset(tenant, &load_id, seq, &value));
                    } else {
                        metastore.push((position, value));
                    }
                }
                let plan = bulk::ndjson::plan(schemas, &metastore);
                let mut unreadable: Vec<Unreadable> = plan.rejected.clone();
                let mut raw = metastore;
                for (seq, position, line, error) in c.unreadable {
                    if seq <= resume {
                        continue;
                    }
                    unreadable.push(Unreadable {
                        position: position.clone(),
                        error,
                    });
                    raw.push((position, Value::String(line)));
                }
                // Containers first: the lake's columns name them as parents.
                let mut o = bulk::write(db, tenant, BULK_SOURCE, plan, unreadable, &raw).await?;
                if let (Some(l), Some(last)) = (lake.as_mut(), lake_rows.last().map(|r| r.seq)) {
                    // Back-pressure: wait while the tenant's backlog is full.
                    loop {
                        let backlog = loads::backlog(db, tenant).await?;
                        if backlog + lake_rows.len() as i64 <= lane.max_backlog as i64
                            || backlog == 0
                        {
                            break;
                        }
                        if !paused {
                            progress.note(&format!(
                                "paused: {backlog} rows wait for `lily run` to promote them (bulk.max_backlog_rows = {})",
                                lane.max_backlog
                            ));
                            paused = true;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    paused = false;
                    l.append(&lake_rows).await?;
                    lake_seq = last;
                    o.records += lake_rows.len() as u64;
                }
                o
            }
        };
        loads::progress(db, tenant, &load_id, rows_metastore, rows_lake, lake_seq).await?;
        add(&mut total, &outcome);
        progress.advance(n);
    }
    reader.await.context("the file reader")??;
    loads::finish_reading(db, tenant, &load_id).await?;
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

/// A lake row of a line the lake lane takes (checked against the schema).
fn lake_asset(tenant: &str, load_id: &str, seq: i64, v: &Value) -> LakeAsset {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    LakeAsset {
        tenant_id: tenant.to_owned(),
        load_id: load_id.to_owned(),
        seq,
        qualified_name: text("qualified_name").unwrap_or_default(),
        type_name: text("type").unwrap_or_default(),
        name: text("name"),
        parent: text("parent"),
        description: text("description"),
        attributes: v
            .get("attributes")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".to_owned()),
        owners: v.get("owners").map(Value::to_string),
    }
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
