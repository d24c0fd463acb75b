//! `lily dlq`: the dead-letter store, listed and replayed through the sink
//! registry.

use anyhow::Context;
use deadpool_postgres::Pool;
use lily_cdc::sink::dead_letter::{DeadLetterFilter, DeadLetters};
use lily_config::LilyConfig;
use lily_inbound::db::Metastore;
use lily_sinks::registry::{self, Registry};

/// The metastore pool of the sinks (outbox, dead letters, references).
pub fn pool(config: &LilyConfig) -> anyhow::Result<Pool> {
    Ok(own_metastore(config, 4)?.pool().clone())
}

/// `size` metastore connections for Lily's own work (the sinks, bulk loads
/// and their promotion), which waits longer for one than an API request.
pub fn own_metastore(config: &LilyConfig, size: usize) -> anyhow::Result<Metastore> {
    Metastore::new(
        &config.postgres.url,
        size,
        &config.postgres.tenant_role,
        std::time::Duration::from_secs(30),
    )
    .context("the metastore connection pool")
}

/// What `lily dlq list` and `lily dlq replay` select.
#[derive(Debug, Clone, Default)]
pub struct DlqSelection {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Also the replayed ones.
    pub all: bool,
    /// At most this many.
    pub limit: i64,
}

impl DlqSelection {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            ids: self.ids.clone(),
            source: self.source.clone(),
            tenant_id: self.tenant.clone(),
            include_replayed: self.all,
            limit: self.limit,
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line
    }
}

/// `lily dlq list`: one line per dead letter.
pub async fn list(config: &LilyConfig, selection: &DlqSelection) -> anyhow::Result<()> {
    let letters = DeadLetters::new(pool(config)?)
        .list(&selection.filter())
        .await?;
    println!("id\tcreated_at\tsource\ttenant\treference\terror_code\terror\treplayed_at");
    for l in &letters {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            l.id,
            l.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            l.source,
            l.tenant_id.as_deref().unwrap_or("-"),
            l.reference,
            l.error_code,
            one_line(&l.error, 160),
            l.replayed_at
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    eprintln!("{} dead letters", letters.len());
    Ok(())
}

/// `lily dlq replay`: sends the selected dead letters again and marks the
/// ones that went; the others stay, with the reason printed.
pub async fn replay(config: &LilyConfig, selection: &DlqSelection) -> anyhow::Result<()> {
    let pool = pool(config)?;
    let sinks = registry::parse(config)?;
    let registry = Registry::build(config, &sinks, &pool, None).await?;
    let store = DeadLetters::new(pool);
    let letters = store.list(&selection.filter()).await?;
    let (mut sent, mut failed) = (0, 0);
    for letter in &letters {
        match registry.replay(letter).await {
            Ok(()) => {
                store.mark_replayed(letter.id).await?;
                println!("{}\treplayed\t{}", letter.id, letter.reference);
                sent += 1;
            }
            Err(e) => {
                println!(
                    "{}\tfailed\t{}\t{}",
                    letter.id,
                    letter.reference,
                    one_line(&format!("{e:#}"), 300)
                );
                failed += 1;
            }
        }
    }
    eprintln!("{sent} replayed, {failed} failed");
    anyhow::ensure!(failed == 0, "{failed} dead letters could not be replayed");
    Ok(())
}
