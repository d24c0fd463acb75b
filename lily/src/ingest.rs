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
use lily_inbound::bulk::{self, Outcome, Unreadable};
use lily_inbound::db::Metastore;
use lily_inbound::schemas::Schemas;
use lily_inbound::sources::datahub::{self, Records};
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
    records: Vec<(String, Value)>,
    unreadable: Vec<(String, String, String)>,
}

/// Loads `files` into `tenant`, `chunk` records per transaction.
pub async fn run(
    config: &LilyConfig,
    tenant: &str,
    files: &[PathBuf],
    chunk: usize,
) -> anyhow::Result<()> {
    let db = Metastore::new(
        &config.postgres.url,
        2,
        &config.postgres.tenant_role,
        Duration::from_secs(30),
    )
    .context("the metastore connection pool")?;
    anyhow::ensure!(
        db.tenant_exists(tenant).await?,
        "tenant {tenant:?} does not exist"
    );
    let schemas = Schemas::compile()?;
    let mut total = Outcome::default();
    for path in files {
        let outcome = load(&db, &schemas, tenant, path, chunk.max(1))
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

async fn load(
    db: &Metastore,
    schemas: &Schemas,
    tenant: &str,
    path: &Path,
    chunk: usize,
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
    let mut total = Outcome::default();
    while let Some(c) = rx.recv().await {
        let n = (c.records.len() + c.unreadable.len()) as u64;
        let outcome = match format {
            Format::DataHub => {
                let mut o = datahub::ingest(db, tenant, Records::File(c.records), true).await?;
                o.dead_letters +=
                    dead_lines(db, tenant, datahub::DEAD_LETTER_SOURCE, &c.unreadable).await?;
                o
            }
            Format::Ndjson => {
                let plan = bulk::ndjson::plan(schemas, &c.records);
                let mut unreadable: Vec<Unreadable> = plan.rejected.clone();
                let mut raw = c.records;
                for (position, line, error) in c.unreadable {
                    unreadable.push(Unreadable {
                        position: position.clone(),
                        error,
                    });
                    raw.push((position, Value::String(line)));
                }
                bulk::write(db, tenant, BULK_SOURCE, plan, unreadable, &raw).await?
            }
        };
        add(&mut total, &outcome);
        progress.advance(n);
    }
    reader.await.context("the file reader")??;
    progress.finish();
    Ok(total)
}

/// Dead letters for lines that were not JSON at all (a DataHub file has
/// none: its array is parsed as a whole).
async fn dead_lines(
    db: &Metastore,
    tenant: &str,
    source: &'static str,
    lines: &[(String, String, String)],
) -> anyhow::Result<u64> {
    if lines.is_empty() {
        return Ok(0);
    }
    let unreadable = lines
        .iter()
        .map(|(p, _, e)| Unreadable {
            position: p.clone(),
            error: e.clone(),
        })
        .collect();
    let raw: Vec<(String, Value)> = lines
        .iter()
        .map(|(p, l, _)| (p.clone(), Value::String(l.clone())))
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
        let position = format!("{name}:{}", i + 1);
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => current.records.push((position, v)),
            Err(e) => current
                .unreadable
                .push((position, line, format!("not JSON: {e}"))),
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
                records.push((format!("{} record {n}", self.name), v));
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

    fn finish(&mut self) {
        self.draw(true);
    }
}
