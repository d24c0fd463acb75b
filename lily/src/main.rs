//! The `lily` command.

mod demo;
mod dlq;
mod inbound;
mod ingest;
mod lake;
mod pipeline;
mod promote;
mod sql;
mod telemetry;
mod transforms;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lily_config::{LilyConfig, LogFormat};
use lily_metastore::{SetupError, SetupOptions, SetupReport};
use tokio::sync::watch;
use tracing::info;

/// Lily: the real-time metadata plane.
#[derive(Debug, Parser)]
#[command(name = "lily", version, about)]
struct Cli {
    /// Configuration file (TOML). Every setting can also be set with LILY_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "LILY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format; overrides log.format.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the server, apply migrations, create the publication and the replication slot.
    Setup,
    /// Run the pipeline: stream metastore changes to every sink until Ctrl-C.
    Run {
        /// Also print every change to standard output (sink name "console").
        #[arg(long)]
        console: bool,
    },
    /// Run everything on this machine: a private PostgreSQL, a sample estate, a local Delta store.
    Demo {
        /// Folder for the demo's PostgreSQL cluster, lake and config.
        #[arg(long, default_value = ".lily")]
        dir: PathBuf,
        /// An osmem-server binary to run as the demo's search cluster (when
        /// the config has no elasticsearch sink); `scripts/demo` passes the one
        /// `scripts/bootstrap` installed.
        #[arg(long, env = "LILY_DEMO_SEARCH_SERVER")]
        search_server: Option<PathBuf>,
    },
    /// Load files into a tenant's catalog: DataHub's `file` sink output (a
    /// JSON array) or Lily's bulk NDJSON (one asset per line).
    Ingest {
        /// The tenant the files load into.
        #[arg(long)]
        tenant: String,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// The files, loaded in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Bulk loads and their lag: per load, what is in the metastore, what
    /// waits in the lake, and the watermark up to which all is consistent.
    Status {
        /// Only this tenant's loads.
        #[arg(long)]
        tenant: Option<String>,
        /// Also each table of this load (an id `lily status` shows): its
        /// columns in the lake, how many are promoted, and its state.
        #[arg(long)]
        load: Option<String>,
    },
    /// Delta Lake maintenance.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// SQL transforms: check, test, reload.
    Transforms {
        #[command(subcommand)]
        command: TransformsCommand,
    },
    /// API keys of machine senders (extraction jobs, Okta, JIRA).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The dead-letter store: what could not be delivered, and why.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// Which dead letters a `lily dlq` command takes.
#[derive(Debug, clap::Args)]
struct DlqArgs {
    /// Only these ids.
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// Only this source: notify, elasticsearch, kafka, kafka_source, transform, datahub, bulk.
    #[arg(long)]
    source: Option<String>,
    /// Only this tenant's.
    #[arg(long)]
    tenant: Option<String>,
    /// Also the ones replayed already.
    #[arg(long)]
    all: bool,
    /// At most this many, oldest first (0: all).
    #[arg(long, default_value_t = 0)]
    limit: i64,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters: id, time, source, tenant, what, error.
    List(DlqArgs),
    /// Send dead letters again: notifications back to their target's queue,
    /// documents to Elasticsearch, records to their Kafka topic.
    Replay(DlqArgs),
}

impl DlqArgs {
    fn selection(self) -> dlq::DlqSelection {
        dlq::DlqSelection {
            ids: self.ids,
            source: self.source,
            tenant: self.tenant,
            all: self.all,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it (shown once; only its hash is stored).
    Create {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Its role there: admin, steward, viewer or ingest.
        #[arg(long, default_value = "ingest")]
        role: String,
        /// What it is for.
        #[arg(long)]
        name: String,
    },
    /// List keys (id, tenant, role, name), without secrets.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the part after lily_).
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TransformsCommand {
    /// Parse and plan every .sql file; print file:line:column for each error and fail on any.
    Check {
        /// Transforms folder (default: transforms.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the .slt files beside the transforms.
    Test {
        /// Transforms folder (default: transforms.dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Make every running `lily run` on this metastore reload its transforms now.
    Reload,
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Compact the small files of the audit table.
    Optimize {
        /// Target file size in bytes (Delta's default when absent).
        #[arg(long)]
        target_size: Option<u64>,
    },
    /// Delete files that no version within the retention period needs.
    Vacuum {
        /// Keep files needed by versions younger than this.
        #[arg(long, default_value_t = 168)]
        retention_hours: u64,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Caps glibc's malloc arenas, before any thread starts. With one arena
/// per thread, records parsed on a reader thread and freed on a writer
/// fragment memory that is never returned: `lily ingest` of 2M assets
/// peaked at 251 MiB with the default and 169 MiB with two arenas, at
/// the same speed (`lily-bench --bulk --assets 2000000`).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) only sets a tunable; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<LilyConfig> {
    let mut config = LilyConfig::load(cli.config.as_deref())?;
    if let Some(f) = &cli.log_format {
        config.log.format = if f == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
    }
    Ok(config)
}

async fn dispatch(command: Command, config: LilyConfig) -> anyhow::Result<()> {
    match command {
        Command::Setup => {
            let report = setup(&config).await?;
            print_setup(&report, &config);
            Ok(())
        }
        Command::Run { console } => run(config, console).await,
        Command::Demo { dir, search_server } => {
            demo::run(&dir, search_server.as_deref(), config).await
        }
        Command::Ingest {
            tenant,
            chunk,
            files,
        } => ingest::run(&config, &tenant, &files, chunk).await,
        Command::Status { tenant, load } => {
            ingest::status(&config, tenant.as_deref(), load.as_deref()).await
        }
        Command::Lake {
            command: LakeCommand::Optimize { target_size },
        } => lake::optimize(&config, target_size).await,
        Command::Lake {
            command:
                LakeCommand::Vacuum {
                    retention_hours,
                    dry_run,
                },
        } => lake::vacuum(&config, retention_hours, dry_run).await,
        Command::Transforms {
            command: TransformsCommand::Check { dir },
        } => transforms::check(&config, dir.as_deref()).await,
        Command::Transforms {
            command: TransformsCommand::Test { dir },
        } => transforms::test(&config, dir.as_deref()).await,
        Command::Transforms {
            command: TransformsCommand::Reload,
        } => transforms::reload(&config).await,
        Command::ApiKey {
            command: ApiKeyCommand::Create { tenant, role, name },
        } => inbound::create_key(&config, &tenant, &role, &name).await,
        Command::ApiKey {
            command: ApiKeyCommand::List { tenant },
        } => inbound::list_keys(&config, tenant.as_deref()).await,
        Command::ApiKey {
            command: ApiKeyCommand::Revoke { key_id },
        } => inbound::revoke_key(&config, &key_id).await,
        Command::Dlq {
            command: DlqCommand::List(args),
        } => dlq::list(&config, &args.selection()).await,
        Command::Dlq {
            command: DlqCommand::Replay(args),
        } => dlq::replay(&config, &args.selection()).await,
    }
}

/// Lily's own client authenticates first: it never sends a password in
/// clear text over unencrypted TCP, which tokio-postgres (the other
/// connections) has no way to refuse. A server that asks for one stops
/// the command before any password leaves.
async fn check_no_cleartext_password(config: &LilyConfig) -> anyhow::Result<()> {
    let pg = lily_cdc::wire::PgConnect::parse(&config.postgres.url).context("postgres.url")?;
    if pg.config.get_password().is_none() {
        return Ok(());
    }
    let params = lily_cdc::wire::ConnectParams::from_connect(&pg)?;
    lily_cdc::wire::ReplicationConnection::connect(&params)
        .await
        .context("checking how the server authenticates Lily")?;
    Ok(())
}

/// `lily setup` against the configured server.
async fn setup(config: &LilyConfig) -> anyhow::Result<SetupReport> {
    check_no_cleartext_password(config).await?;
    let pg = lily_cdc::wire::PgConnect::parse(&config.postgres.url).context("postgres.url")?;
    let target = describe_target(&pg.config);
    let (mut client, connection) = pg
        .config
        .connect(pg.tls.clone())
        .await
        .map_err(|source| SetupError::Connect { target, source })?;
    let conn_task = tokio::spawn(connection);
    let opts = SetupOptions {
        slot: config.replication.slot.clone(),
        publication: config.replication.publication.clone(),
        tenant_role: config.postgres.tenant_role.clone(),
    };
    let report = lily_metastore::setup(&mut client, &opts).await?;
    drop(client);
    let _ = conn_task.await;
    Ok(report)
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn print_setup(report: &SetupReport, config: &LilyConfig) {
    match report.migrations_applied.as_slice() {
        [] => println!("migrations: up to date"),
        v => println!("migrations: applied {v:?}"),
    }
    println!(
        "publication {}: {} ({} tables)",
        config.replication.publication,
        if report.publication_created {
            "created"
        } else {
            "up to date"
        },
        report.published_tables.len()
    );
    println!(
        "replication slot {}: {}",
        config.replication.slot,
        if report.slot_created {
            "created"
        } else {
            "exists"
        }
    );
}

async fn run(mut config: LilyConfig, console: bool) -> anyhow::Result<()> {
    if console {
        pipeline::add_console(&mut config);
    }
    telemetry::init_metrics(&config.metrics.listen)?;
    check_no_cleartext_password(&config).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("stopping: finishing in-flight batches");
        let _ = shutdown_tx.send(true);
    });
    pipeline::run(&config, shutdown_rx).await
}
