//! The loaded transforms: the last good version of every file, reloaded
//! when files change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use tracing::{error, info, warn};

use crate::error::{Result, TransformError};
use crate::output::OutputContract;
use crate::propagation;
use crate::runner::compile;
use crate::session::new_session;
use crate::source::{TransformKind, TransformSource, discover};
use crate::state::CatalogState;

/// What a (re)load did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Transforms loaded or replaced by a new version.
    pub loaded: Vec<String>,
    /// Transforms whose file had not changed.
    pub unchanged: usize,
    /// Transforms whose file is gone.
    pub removed: Vec<String>,
    /// Files that do not load; their last good version (if any) stays.
    pub errors: Vec<TransformError>,
}

#[derive(Default)]
struct Loaded {
    generation: u64,
    good: BTreeMap<String, TransformSource>,
}

/// The transforms of one folder (cheap to clone: clones share the set).
#[derive(Clone)]
pub struct TransformSet {
    dir: PathBuf,
    loaded: Arc<RwLock<Loaded>>,
}

/// The extra input tables and output contract of a transform of `kind`.
pub(crate) fn shape_of(
    source: &TransformSource,
) -> Result<(Vec<(String, SchemaRef)>, OutputContract)> {
    match source.kind {
        TransformKind::PostConsume => Ok((Vec::new(), OutputContract::Any)),
        TransformKind::PreIngest => match source.directive("target") {
            Some(target) => Ok((
                Vec::new(),
                OutputContract::IntoTable(target.trim_start_matches("metastore.").to_owned()),
            )),
            None => Err(source.error(
                "a pre-ingest transform names the metastore table it feeds in a header line: -- target: <table>",
            )),
        },
        TransformKind::Propagation => propagation::shape_of(source),
    }
}

/// Checks one file: it parses, plans against the transform inputs, and its
/// output has the shape its kind requires. Returns its output schema.
pub async fn check_source(source: &TransformSource) -> Result<SchemaRef> {
    let (inputs, contract) = shape_of(source)?;
    let session = new_session(Arc::new(CatalogState::new(Vec::new())), inputs)
        .map_err(|e| source.datafusion_error(&e))?;
    Ok(compile(&session, source, &contract).await?.schema)
}

impl TransformSet {
    /// Loads every file under `dir`; files that do not load are reported
    /// and left out.
    pub async fn load(dir: impl AsRef<Path>) -> Result<(Self, ReloadReport)> {
        let set = Self {
            dir: dir.as_ref().to_owned(),
            loaded: Arc::new(RwLock::new(Loaded::default())),
        };
        let report = set.reload().await?;
        Ok((set, report))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the folder: changed files that load replace their previous
    /// version; files that do not load are reported (with file and line)
    /// and their last good version stays.
    pub async fn reload(&self) -> Result<ReloadReport> {
        let sources = discover(&self.dir)?;
        let mut report = ReloadReport::default();
        let current: BTreeMap<String, TransformSource> = self.read().good.clone();
        let mut next = current.clone();
        for source in &sources {
            if current
                .get(&source.name)
                .is_some_and(|c| c.sql == source.sql)
            {
                report.unchanged += 1;
                continue;
            }
            match check_source(source).await {
                Ok(_) => {
                    next.insert(source.name.clone(), source.clone());
                    report.loaded.push(source.name.clone());
                }
                Err(e) => {
                    metrics::counter!("lily_transform_errors_total", "transform" => source.name.clone(), "stage" => "load")
                        .increment(1);
                    if current.contains_key(&source.name) {
                        error!(transform = %source.name, error = %e, "transform does not load; keeping its last good version");
                    } else {
                        error!(transform = %source.name, error = %e, "transform does not load");
                    }
                    report.errors.push(e);
                }
            }
        }
        for name in current.keys() {
            if !sources.iter().any(|s| &s.name == name) {
                warn!(transform = %name, "transform file removed; sinks it feeds keep their last version");
                next.remove(name);
                report.removed.push(name.clone());
            }
        }
        if !report.loaded.is_empty() || !report.removed.is_empty() {
            let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
            loaded.good = next;
            loaded.generation += 1;
            info!(loaded = ?report.loaded, removed = ?report.removed, errors = report.errors.len(), "transforms loaded");
        }
        metrics::counter!("lily_transform_reloads_total", "result" => if report.errors.is_empty() { "ok" } else { "error" })
            .increment(1);
        Ok(report)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes every time a transform is loaded, replaced or removed.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The last good version of a transform.
    pub fn get(&self, name: &str) -> Option<TransformSource> {
        self.read().good.get(name).cloned()
    }

    /// Names of the loaded transforms.
    pub fn names(&self) -> Vec<String> {
        self.read().good.keys().cloned().collect()
    }

    /// A fingerprint of the folder's `.sql` files (names, sizes, modification
    /// times), to notice changes cheaply.
    pub fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
        let mut out = Vec::new();
        for kind in TransformKind::ALL {
            let Ok(entries) = std::fs::read_dir(self.dir.join(kind.folder())) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "sql")
                    && let Ok(meta) = entry.metadata()
                {
                    out.push((path, meta.len(), meta.modified().ok()));
                }
            }
        }
        out.sort();
        out
    }
}
