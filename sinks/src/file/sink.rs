//! The file sink: lines gathered per file between flushes, appended and
//! synced on flush, then the state that makes a restart exact.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lily_cdc::sink::{Sink, SinkError};
use lily_cdc::{ChangeBatch, Lsn, TenantId};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::kafka::envelope::NO_TENANT;
use crate::kafka::{ChangeRows, JsonEnvelope};

/// The file holding the sink's state, in its folder.
pub const STATE_FILE: &str = "_lily_file_sink.json";

/// A position in the stream: commit LSN, place in the transaction.
type Position = (u64, u64);

/// What is durable: each file's length, and the last position written per
/// stream.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    files: BTreeMap<String, u64>,
    streams: BTreeMap<String, Position>,
}

/// Writes changes as NDJSON, one file per tenant and day.
pub struct FileSink {
    name: String,
    root: PathBuf,
    state: State,
    /// Lines waiting for the next flush, by file (relative to `root`).
    pending: BTreeMap<String, String>,
    /// The last position among the pending lines, by stream.
    pending_streams: BTreeMap<String, Position>,
    pending_rows: usize,
}

fn io_error(sink: &str, what: &str, e: std::io::Error) -> SinkError {
    SinkError::Unavailable {
        sink: sink.to_owned(),
        message: format!("{what}: {e}"),
    }
}

impl FileSink {
    /// The sink `name` writing under `root`: creates the folder, and cuts
    /// back whatever a crash left after the last flush.
    pub fn open(name: &str, root: &Path) -> Result<Self, String> {
        fs::create_dir_all(root)
            .map_err(|e| format!("cannot create the folder {}: {e}", root.display()))?;
        let state_path = root.join(STATE_FILE);
        let files = data_files(root)
            .map_err(|e| format!("cannot list the files in {}: {e}", root.display()))?;
        let state = match fs::read(&state_path) {
            Ok(bytes) => {
                let mut state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{} is not this sink's state: {e}", state_path.display()))?;
                // A file an operator removed starts again from nothing.
                state.files.retain(|file, _| files.contains(file));
                // Anything past the recorded length was written after the
                // last flush: it arrives again.
                for file in &files {
                    let recorded = state.files.get(file).copied().unwrap_or(0);
                    cut_to(&root.join(file), recorded)
                        .map_err(|e| format!("cannot cut back {file}: {e}"))?;
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rebuild(root, &files).map_err(|e| format!("reading the files back: {e}"))?
            }
            Err(e) => return Err(format!("cannot read {}: {e}", state_path.display())),
        };
        info!(sink = name, folder = %root.display(), files = state.files.len(), "file sink opened");
        Ok(Self {
            name: name.to_owned(),
            root: root.to_owned(),
            state,
            pending: BTreeMap::new(),
            pending_streams: BTreeMap::new(),
            pending_rows: 0,
        })
    }

    /// The last position written of `stream`, pending or durable.
    fn written_through(&self, stream: &str) -> Option<Position> {
        self.pending_streams
            .get(stream)
            .or_else(|| self.state.streams.get(stream))
            .copied()
    }

    fn save_state(&self) -> std::io::Result<()> {
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.root.join(STATE_FILE))?;
        sync_dir(&self.root)
    }
}

/// The data files under `root`, relative to it: `<tenant>/<day>.ndjson`.
fn data_files(root: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for dir in fs::read_dir(root)? {
        let dir = dir?;
        if !dir.file_type()?.is_dir() {
            continue;
        }
        for file in fs::read_dir(dir.path())? {
            let file = file?;
            let name = file.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ndjson") {
                out.push(format!(
                    "{}/{name}",
                    dir.file_name().to_string_lossy()
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn cut_to(path: &Path, len: u64) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    if f.metadata()?.len() > len {
        f.set_len(len)?;
        f.sync_all()?;
    }
    Ok(())
}

/// The state of files written without one (it was deleted, or this is an
/// older folder): every complete line counts, a torn last line is cut.
fn rebuild(root: &Path, files: &[String]) -> std::io::Result<State> {
    let mut state = State::default();
    for file in files {
        let path = root.join(file);
        let mut reader = BufReader::new(File::open(&path)?);
        let mut complete = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            complete += n as u64;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let stream = v["stream"].as_str().unwrap_or_default().to_owned();
            let lsn = v["commit_lsn"]
                .as_str()
                .and_then(|l| l.parse::<Lsn>().ok())
                .map_or(0, |l| l.0);
            let seq = v["seq"].as_u64().unwrap_or(0);
            let entry = state.streams.entry(stream).or_default();
            *entry = (*entry).max((lsn, seq));
        }
        cut_to(&path, complete)?;
        state.files.insert(file.clone(), complete);
    }
    if !files.is_empty() {
        warn!(folder = %root.display(), files = files.len(), "no state file: positions read back from the files");
    }
    Ok(state)
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Arc<ChangeBatch>) -> Result<(), SinkError> {
        let rows = ChangeRows::new(&batch);
        let envelope = JsonEnvelope::new(&rows);
        // Positions are per stream as the envelope names it (the table
        // without its schema: the publication holds `metastore` only).
        let stream = rows.stream.to_owned();
        // Rows carry a position only with both columns (a transform's
        // output may lack them; it is then written whole, every time).
        let schema = batch.records.schema();
        let positioned = schema.index_of(lily_cdc::batch::COMMIT_LSN).is_ok()
            && schema.index_of(lily_cdc::batch::SEQ).is_ok();
        // Rows at or before what an earlier batch of the stream wrote came
        // again after a restart. Within a batch nothing is compared: a
        // transform's output need not be in order.
        let before = self.written_through(&stream);
        let mut last = before;
        // Check the whole batch first: a refused batch leaves nothing behind.
        let mut lines = Vec::with_capacity(rows.len());
        for row in 0..rows.len() {
            let meta = rows.meta(row);
            let position = (meta.commit_lsn.0, meta.seq);
            if positioned {
                if before.is_some_and(|b| position <= b) {
                    continue;
                }
                last = last.max(Some(position));
            }
            let folder = if meta.tenant == NO_TENANT {
                NO_TENANT.to_owned()
            } else {
                TenantId::parse(&meta.tenant)
                    .map_err(|e| SinkError::Rejected {
                        sink: self.name.clone(),
                        message: e.to_string(),
                    })?
                    .segment()
            };
            let day = meta
                .commit_micros
                .and_then(chrono::DateTime::from_timestamp_micros)
                .unwrap_or_else(chrono::Utc::now)
                .format("%Y-%m-%d");
            let mut line = envelope.encode(row, &meta);
            line.push(b'\n');
            lines.push((format!("{folder}/{day}.ndjson"), line));
        }
        for (file, line) in lines {
            self.pending
                .entry(file)
                .or_default()
                .push_str(&String::from_utf8_lossy(&line));
            self.pending_rows += 1;
        }
        if let Some(last) = last.filter(|_| positioned) {
            self.pending_streams.insert(stream, last);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() && self.pending_streams.is_empty() {
            return Ok(());
        }
        let mut lengths = Vec::with_capacity(self.pending.len());
        for (file, lines) in &self.pending {
            let path = self.root.join(file);
            let err = |what: &str, e| io_error(&self.name, &format!("{what} {}", path.display()), e);
            let dir = path.parent().unwrap_or(&self.root);
            let new_dir = !dir.exists();
            let new_file = !path.exists();
            fs::create_dir_all(dir).map_err(|e| err("creating the folder of", e))?;
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| err("opening", e))?;
            // A failed flush may have appended part of this already; a file
            // removed meanwhile starts from nothing (never padded).
            let current = f.metadata().map_err(|e| err("reading", e))?.len();
            let base = self.state.files.get(file).copied().unwrap_or(0).min(current);
            f.set_len(base).map_err(|e| err("cutting back", e))?;
            f.write_all(lines.as_bytes())
                .map_err(|e| err("writing", e))?;
            f.sync_all().map_err(|e| err("syncing", e))?;
            // A new entry is durable only once its folder is.
            if new_file {
                sync_dir(dir).map_err(|e| err("syncing the folder of", e))?;
            }
            if new_dir {
                sync_dir(&self.root).map_err(|e| err("syncing the folder of", e))?;
            }
            lengths.push((file.clone(), base + lines.len() as u64));
        }
        let before = std::mem::take(&mut self.state.files);
        self.state.files = before.clone();
        self.state.files.extend(lengths);
        let streams = self.state.streams.clone();
        self.state.streams.extend(
            self.pending_streams
                .iter()
                .map(|(s, p)| (s.clone(), *p)),
        );
        if let Err(e) = self.save_state() {
            // Nothing counts as written until the state says so.
            self.state.files = before;
            self.state.streams = streams;
            return Err(io_error(&self.name, "saving the state", e));
        }
        metrics::counter!("lily_file_sink_lines_total", "sink" => self.name.clone())
            .increment(self.pending_rows as u64);
        self.pending.clear();
        self.pending_streams.clear();
        self.pending_rows = 0;
        Ok(())
    }

    fn buffered_rows(&self) -> usize {
        self.pending_rows
    }

    async fn discard_snapshot(&mut self, snapshot_lsn: Lsn) -> Result<(), SinkError> {
        // Lines cannot be taken back; the next snapshot's rows (`op` "r")
        // follow with a later LSN.
        info!(sink = %self.name, %snapshot_lsn, "an unfinished snapshot's lines stay; the next snapshot follows them");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lily-file-sink-{name}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A transform's output for `assets`: rows at `positions`, tenant acme.
    fn output(positions: &[(u64, u64)]) -> Arc<ChangeBatch> {
        use arrow::array::{StringArray, UInt64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        use lily_cdc::batch::{COMMIT_LSN, OP, SEQ};
        let schema = Arc::new(Schema::new(vec![
            Field::new(OP, DataType::Utf8, true),
            Field::new(COMMIT_LSN, DataType::UInt64, true),
            Field::new(SEQ, DataType::UInt64, true),
            Field::new("tenant_id", DataType::Utf8, true),
        ]));
        let n = positions.len();
        let records = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["u"; n])),
                Arc::new(UInt64Array::from(
                    positions.iter().map(|p| p.0).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    positions.iter().map(|p| p.1).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(vec!["acme"; n])),
            ],
        )
        .unwrap();
        let table = lily_cdc::TableSchema {
            relation_id: 1,
            namespace: "metastore".into(),
            name: "assets".into(),
            replica_identity: lily_cdc::pgoutput::ReplicaIdentity::Default,
            columns: Vec::new(),
            arrow: schema,
        };
        Arc::new(ChangeBatch {
            seq: lily_cdc::BatchSeq(1),
            table: Arc::new(table),
            records,
            first: lily_cdc::Position::default(),
            last: lily_cdc::Position::default(),
            first_commit_micros: 0,
        })
    }

    fn written(dir: &Path) -> usize {
        data_files(dir)
            .unwrap()
            .iter()
            .map(|f| fs::read_to_string(dir.join(f)).unwrap().lines().count())
            .sum()
    }

    #[tokio::test]
    async fn rows_out_of_order_within_a_batch_are_all_written_and_a_resent_batch_is_not() {
        let dir = scratch("order");
        let mut sink = FileSink::open("debug", &dir).unwrap();
        // A transform's output: out of order, two rows from one change.
        sink.write(output(&[(20, 1), (10, 5), (20, 1)])).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(written(&dir), 3);
        // After a restart the slot sends the change at (20, 1) again.
        let mut sink = FileSink::open("debug", &dir).unwrap();
        sink.write(output(&[(20, 1), (30, 0)])).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(written(&dir), 4);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_cut_and_positions_are_read_back_without_a_state() {
        let dir = scratch("torn");
        let tenant = dir.join("acme");
        fs::create_dir_all(&tenant).unwrap();
        fs::write(
            tenant.join("2026-12-01.ndjson"),
            "{\"stream\":\"assets\",\"commit_lsn\":\"0/10\",\"seq\":2}\n{\"stream\":\"assets\",\"comm",
        )
        .unwrap();
        let sink = FileSink::open("debug", &dir).unwrap();
        assert_eq!(sink.state.streams["assets"], (0x10, 2));
        let text = fs::read_to_string(tenant.join("2026-12-01.ndjson")).unwrap();
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_the_state_does_not_know_is_cut_back() {
        let dir = scratch("cut");
        let tenant = dir.join("acme");
        fs::create_dir_all(&tenant).unwrap();
        fs::write(tenant.join("2026-12-01.ndjson"), "one\ntwo\n").unwrap();
        fs::write(tenant.join("2026-12-02.ndjson"), "unflushed\n").unwrap();
        fs::write(
            dir.join(STATE_FILE),
            r#"{"files": {"acme/2026-12-01.ndjson": 4}, "streams": {}}"#,
        )
        .unwrap();
        FileSink::open("debug", &dir).unwrap();
        assert_eq!(fs::read_to_string(tenant.join("2026-12-01.ndjson")).unwrap(), "one\n");
        assert_eq!(fs::read_to_string(tenant.join("2026-12-02.ndjson")).unwrap(), "");
        fs::remove_dir_all(&dir).unwrap();
    }
}
