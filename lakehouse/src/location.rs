//! Where the lake lives: a local folder or an object-store URL.

use std::collections::HashMap;

use url::Url;

use crate::error::LakeError;

/// The lake root, resolved to a URL, and its object-store options.
#[derive(Debug, Clone)]
pub struct LakeLocation {
    root: Url,
    storage_options: HashMap<String, String>,
}

/// Teaches delta-rs the object stores this build supports (S3 and
/// S3-compatible stores: MinIO, Ceph, R2), once per process.
fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

impl LakeLocation {
    /// Resolves `root`: a URL with a scheme (`file://`, `s3://`, `memory://`, ...)
    /// is used as is; anything else is a local folder, created if missing.
    pub fn parse(root: &str, storage_options: HashMap<String, String>) -> Result<Self, LakeError> {
        register_object_stores();
        let err = |message: String| LakeError::Location {
            root: root.to_string(),
            message,
        };
        let mut url = if root.contains("://") {
            Url::parse(root).map_err(|e| err(e.to_string()))?
        } else {
            std::fs::create_dir_all(root)
                .map_err(|e| err(format!("cannot create the folder: {e}")))?;
            let abs = std::fs::canonicalize(root).map_err(|e| err(e.to_string()))?;
            Url::from_directory_path(&abs).map_err(|_| err("not an absolute path".into()))?
        };
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(LakeLocation {
            root: url,
            storage_options,
        })
    }

    /// URL of the table at `relative` (e.g. `audit/changes`) under the root.
    pub fn table_url(&self, relative: &str) -> Result<Url, LakeError> {
        self.root
            .join(&format!("{}/", relative.trim_matches('/')))
            .map_err(|e| LakeError::Location {
                root: self.root.to_string(),
                message: e.to_string(),
            })
    }

    /// Object-store options (credentials, endpoint, region).
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// Opens the table at `relative`; a location without a table yet opens as
    /// an empty table (`version()` is `None`) that the first write creates.
    pub async fn open_table(&self, relative: &str) -> Result<deltalake::DeltaTable, LakeError> {
        let url = self.table_url(relative)?;
        if url.scheme() == "file"
            && let Ok(path) = url.to_file_path()
        {
            // delta-rs reports a missing local folder as an error, not as "no table yet".
            std::fs::create_dir_all(&path).map_err(|e| LakeError::Location {
                root: self.root.to_string(),
                message: format!("cannot create {}: {e}", path.display()),
            })?;
        }
        deltalake::DeltaTable::try_from_url_with_storage_options(
            url.clone(),
            self.storage_options.clone(),
        )
        .await
        .map_err(|source| LakeError::Delta {
            table: url.to_string(),
            source,
        })
    }

    /// Opens the table at `relative`, creating it with `schema`, its
    /// `partitions` and `comment` when there is none yet.
    pub async fn open_or_create(
        &self,
        relative: &str,
        schema: &arrow::datatypes::Schema,
        partitions: &[&str],
        comment: &str,
    ) -> Result<deltalake::DeltaTable, LakeError> {
        use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
        let table = self.open_table(relative).await?;
        if table.version().is_some() {
            return Ok(table);
        }
        let url = table.table_url().to_string();
        let kernel: deltalake::kernel::StructType = schema.try_into_kernel()?;
        match table
            .create()
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(partitions.iter().copied())
            .with_comment(comment)
            .await
        {
            Ok(t) => Ok(t),
            // Another process created it meanwhile: open theirs.
            Err(_) if self.open_table(relative).await?.version().is_some() => {
                self.open_table(relative).await
            }
            Err(source) => Err(LakeError::Delta { table: url, source }),
        }
    }
}

/// Appends `batch` to `table` in one Delta commit, partitioned by
/// `partitions` (the table's own); the table after the commit.
pub(crate) async fn append_batch(
    table: &deltalake::DeltaTable,
    batch: arrow::array::RecordBatch,
    partitions: &[&str],
) -> Result<deltalake::DeltaTable, LakeError> {
    let url = table.table_url().to_string();
    table
        .clone()
        .write(vec![batch])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_partition_columns(partitions.iter().copied())
        .await
        .map_err(|source| LakeError::Delta { table: url, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_become_file_urls_and_urls_stay() {
        let dir = tempfile::tempdir().unwrap();
        let loc =
            LakeLocation::parse(dir.path().join("lake").to_str().unwrap(), HashMap::new()).unwrap();
        let url = loc.table_url("audit/changes").unwrap();
        assert_eq!(url.scheme(), "file");
        assert!(url.path().ends_with("/lake/audit/changes/"));
        let loc = LakeLocation::parse("s3://bucket/lake", HashMap::new()).unwrap();
        assert_eq!(
            loc.table_url("audit/changes").unwrap().as_str(),
            "s3://bucket/lake/audit/changes/"
        );
    }
}
