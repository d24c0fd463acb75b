//! The configuration structs and their defaults.
//!
//! The doc comment on each field is the user documentation of that setting;
//! `lily.toml` at the root of this crate repeats every key with its default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole of Lily's configuration: one section per table of `lily.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LilyConfig {
    /// `[postgres]`: the metastore database.
    pub postgres: PostgresConfig,
    /// `[replication]`: the logical replication stream and its batching.
    pub replication: ReplicationConfig,
    /// `[lake]`: the Delta Lake the changes are written to.
    pub lake: LakeConfig,
    /// `[transforms]`: the analysts' SQL transforms.
    pub transforms: TransformsConfig,
    /// `[propagation]`: lineage propagation of tags and attributes.
    pub propagation: PropagationConfig,
    /// `[api]`: the HTTP API that `lily run` serves.
    pub api: ApiConfig,
    /// `[auth]`: how bearer tokens are verified.
    pub auth: AuthConfig,
    /// `[sql]`: the PostgreSQL-wire SQL endpoint that masks governed data.
    pub sql: SqlConfig,
    /// `[trino]`: Trino clusters whose OPA access control Lily answers.
    pub trino: TrinoConfig,
    /// `[monte_carlo]`: the Monte Carlo incident webhook.
    pub monte_carlo: MonteCarloConfig,
    /// `[okta]`: Okta Event Hooks.
    pub okta: OktaConfig,
    /// `[jira]`: JIRA webhooks.
    pub jira: JiraConfig,
    /// `[kafka_source]`: Monte Carlo events consumed from Kafka topics.
    pub kafka_source: KafkaSourceConfig,
    /// `[bulk]`: bulk loads (`lily ingest`) and their two lanes.
    pub bulk: BulkConfig,
    /// `[sinks.<name>]`: where changes go (search, Kafka, SaaS tools,
    /// files), by name. Each table's `type` picks the kind of sink, and the
    /// sink registry (`lily_sinks::registry`) reads the rest with the
    /// kind's own settings; `transform` names the transform feeding it.
    pub sinks: BTreeMap<String, toml::Table>,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// `[postgres]`: the PostgreSQL database that holds the metastore.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection string of the metastore, URL or key=value form (libpq
    /// syntax), e.g. `postgres://user:secret@db.example:5432/lily` or
    /// `host=db.example user=lily dbname=lily`.
    ///
    /// Default `"postgres://postgres@127.0.0.1:5432/lily"`.
    pub url: String,
    /// Role that tenant-scoped API sessions switch to (`SET ROLE`) so that
    /// row-level security applies. A PostgreSQL identifier: 1-63 characters
    /// of a-z, 0-9 and `_`, not starting with a digit.
    ///
    /// Default `"lily_tenant"`.
    pub tenant_role: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/lily".to_owned(),
            tenant_role: "lily_tenant".to_owned(),
        }
    }
}

/// `[replication]`: the logical replication stream read from PostgreSQL and
/// how its changes are cut into Arrow batches.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Name of the logical replication slot Lily creates and reads: 1-63
    /// characters of a-z, 0-9 and `_`.
    ///
    /// Default `"lily"`.
    pub slot: String,
    /// Name of the publication listing the metastore tables to stream: 1-63
    /// characters of a-z, 0-9 and `_`, not starting with a digit.
    ///
    /// Default `"lily_metastore"`.
    pub publication: String,
    /// A batch is closed once it holds this many rows. Must be at least 1.
    ///
    /// Default `8192`.
    pub batch_max_rows: usize,
    /// A batch is closed once its column data reaches this many bytes. Must
    /// be at least 1024.
    ///
    /// Default `8388608` (8 MiB).
    pub batch_max_bytes: usize,
    /// A batch is closed at the latest this many milliseconds after its first
    /// row. A batch also closes at a commit when no more data is waiting, so
    /// this only bounds latency under a steady stream. `0` closes every batch
    /// as soon as no more data is immediately available.
    ///
    /// Default `20`.
    pub batch_max_wait_ms: u64,
    /// Interval in milliseconds between standby status updates sent to the
    /// server (they confirm the flushed position so WAL can be recycled).
    /// Must be at least 1.
    ///
    /// Default `1000`.
    pub status_interval_ms: u64,
    /// Interval in milliseconds between logical heartbeat messages written to
    /// the WAL, so that an idle database never pins WAL behind the slot. Must
    /// be at least 1.
    ///
    /// Default `10000`.
    pub heartbeat_interval_ms: u64,
    /// Number of batches in flight between the replication reader and the
    /// sinks; when it is full the reader waits (backpressure). Must be at
    /// least 1.
    ///
    /// Default `16`.
    pub channel_capacity: usize,
    /// Bytes of WAL retained by the slot beyond which the replication-lag
    /// alert metric is raised.
    ///
    /// Default `1073741824` (1 GiB).
    pub max_lag_bytes: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            slot: "lily".to_owned(),
            publication: "lily_metastore".to_owned(),
            batch_max_rows: 8192,
            batch_max_bytes: 8 * 1024 * 1024,
            batch_max_wait_ms: 20,
            status_interval_ms: 1000,
            heartbeat_interval_ms: 10_000,
            channel_capacity: 16,
            max_lag_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// `[lake]`: the Delta Lake the change batches are written to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Root of the Delta Lake: a local folder or an object-store URL
    /// (`s3://`, `gs://`, `az://`, `file://`).
    ///
    /// Default `"./.lily/lake"`.
    pub root: String,
    /// The lake writer commits buffered rows at least this often, in
    /// milliseconds. Must be at least 1.
    ///
    /// Default `500`.
    pub flush_interval_ms: u64,
    /// The lake writer commits as soon as this many rows are buffered. Must
    /// be at least 1.
    ///
    /// Default `50000`: bounds what a flush holds in memory (with the
    /// defaults, `lily run` peaks near 300 MiB on a 1M-row transaction).
    pub flush_max_rows: usize,
    /// Extra object-store options (credentials, endpoint, region, ...),
    /// passed through as-is to the object store, e.g. `aws_region =
    /// "eu-west-1"`. From the environment:
    /// `LILY_LAKE__STORAGE_OPTIONS__AWS_REGION=eu-west-1` (the key is
    /// lower-cased).
    ///
    /// Default: empty.
    pub storage_options: BTreeMap<String, String>,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            root: "./.lily/lake".to_owned(),
            flush_interval_ms: 500,
            flush_max_rows: 50_000,
            storage_options: BTreeMap::new(),
        }
    }
}

/// `[transforms]`: the SQL transforms analysts write, one `.sql` file each.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformsConfig {
    /// Folder of the transforms: post-consume transforms at its top level,
    /// pre-ingest ones in `ingest/`, lineage propagation in `propagation/`.
    ///
    /// Default `"./sql-transforms"`.
    pub dir: String,
    /// How often, in milliseconds, the folder is checked for changed files;
    /// a file that no longer plans is reported and its last good version
    /// keeps running. `0` turns the check off (`lily transforms reload`
    /// still reloads).
    ///
    /// Default `1000`.
    pub reload_interval_ms: u64,
}

impl Default for TransformsConfig {
    fn default() -> Self {
        Self {
            dir: "./sql-transforms".to_owned(),
            reload_interval_ms: 1000,
        }
    }
}

/// `[bulk]`: bulk loads, the 80/20 rule. Containers (databases, schemas,
/// tables, dashboards: asset types whose `consistency` is `immediate`) are
/// written to the metastore as they load; columns and BI fields that carry
/// no tags or lineage land in the lake's `catalog/assets` table first and
/// `lily run` promotes them into the metastore in the background.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    /// Whether `lily ingest` sends columns and BI fields through the lake;
    /// `false` writes every asset to the metastore as it loads.
    ///
    /// Default `true`.
    pub lake_lane: bool,
    /// Rows a tenant may have in the lake not yet promoted; past it,
    /// `lily ingest` pauses until `lily run` catches up. Must be at least 1.
    ///
    /// Default `5000000`.
    pub max_backlog_rows: u64,
    /// Rows `lily run` promotes per transaction; `0` turns its promoter
    /// off (a `lily run` that only serves the API, say: another one
    /// promotes). Lake rows a tag or a lineage edge of the catalog API
    /// names are promoted on demand either way.
    ///
    /// Default `5000`.
    pub promote_rows: usize,
    /// Milliseconds between `lily run`'s looks for rows to promote.
    ///
    /// Default `500`.
    pub promote_interval_ms: u64,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            lake_lane: true,
            max_backlog_rows: 5_000_000,
            promote_rows: 5_000,
            promote_interval_ms: 500,
        }
    }
}

/// `[propagation]`: what lineage propagation carries downstream and writes
/// back to the metastore.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PropagationConfig {
    /// Whether `lily run` propagates at all.
    ///
    /// Default `true`.
    pub enabled: bool,
    /// Tags that propagate (when their classification has `propagate` on);
    /// empty means every tag, e.g. `["PII", "GDPR"]`.
    ///
    /// Default: empty (every tag).
    pub tags: Vec<String>,
    /// Asset attributes whose values propagate downstream, written to
    /// `metastore.propagated_attributes`.
    ///
    /// Default: one entry, `certificate` with value `deprecated`.
    pub attributes: Vec<PropagatedAttribute>,
    /// Most lineage hops a tag or attribute travels from its origin. An
    /// origin whose downstream is deeper is not propagated: it becomes an
    /// error event (a dead letter of source `propagation`, a metric and a
    /// log line) and the copies it already gave stay as they are, so one
    /// tenant's runaway chain cannot hold the stream for everyone.
    ///
    /// Default `1000`.
    pub max_depth: usize,
    /// Most assets one origin propagates to; beyond, the same error event.
    ///
    /// Default `200000`.
    pub max_assets: usize,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tags: Vec::new(),
            attributes: vec![PropagatedAttribute {
                name: "certificate".to_owned(),
                values: vec!["deprecated".to_owned()],
            }],
            max_depth: 1000,
            max_assets: 200_000,
        }
    }
}

/// An asset attribute that propagates downstream through lineage.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PropagatedAttribute {
    /// The asset column: `certificate` or `owners` (each owner propagates
    /// as its own value).
    pub name: String,
    /// Only these values propagate; empty means every value.
    #[serde(default)]
    pub values: Vec<String>,
}

/// `[api]`: the HTTP API (ingest, catalog) served by `lily run`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address (IP and port) the API listens on, e.g. `"0.0.0.0:8080"`; an
    /// empty string disables the API.
    ///
    /// Default `"127.0.0.1:8080"`.
    pub listen: String,
    /// Largest request body accepted, in bytes; a larger one is refused
    /// with 413. Must be at least 1024.
    ///
    /// Default `1048576` (1 MiB).
    pub body_limit_bytes: usize,
    /// Largest body of the bulk routes (DataHub's ingestion endpoints,
    /// whose emitter sends batches of up to 15 MiB), in bytes; a larger
    /// one is refused with 413. Must be at least `body_limit_bytes`.
    ///
    /// Default `16777216` (16 MiB).
    pub bulk_body_limit_bytes: usize,
    /// Database connections shared by the API and the inbound sources.
    /// Must be at least 1.
    ///
    /// Default `8`.
    pub pool_size: usize,
    /// How long in milliseconds a verified API key is trusted before it is
    /// looked up again: the longest a revoked key keeps working.
    ///
    /// Default `30000`.
    pub api_key_cache_ms: u64,
    /// The `elasticsearch` sink whose cluster the search API queries; empty:
    /// the only one there is (no search API without one).
    ///
    /// Default `""`.
    pub search_sink: String,
    /// Milliseconds a client has to send a request's headers once it
    /// connects or starts a request; slower connections are closed.
    ///
    /// Default `10000`.
    pub header_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body; slower bodies
    /// get 408.
    ///
    /// Default `30000`.
    pub body_timeout_ms: u64,
    /// Milliseconds a request may take in all; a longer one is abandoned
    /// (its transaction rolled back) with 503 and `Retry-After`.
    ///
    /// Default `60000`.
    pub request_timeout_ms: u64,
    /// Milliseconds a request waits for a metastore connection when all
    /// are busy; then 503 with `Retry-After`.
    ///
    /// Default `2000`.
    pub pool_wait_ms: u64,
    /// Requests one tenant may have in progress at once, so one tenant
    /// cannot hold every connection. Must be at least 1.
    ///
    /// Default `4`.
    pub tenant_concurrency: usize,
    /// Milliseconds a tenant's request waits for one of its slots; then
    /// 429 with `Retry-After`.
    ///
    /// Default `1000`.
    pub tenant_queue_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            body_limit_bytes: 1024 * 1024,
            bulk_body_limit_bytes: 16 * 1024 * 1024,
            pool_size: 8,
            api_key_cache_ms: 30_000,
            search_sink: String::new(),
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            pool_wait_ms: 2_000,
            tenant_concurrency: 4,
            tenant_queue_ms: 1_000,
        }
    }
}

/// `[sql]`: the SQL endpoint `lily run` serves over the PostgreSQL wire
/// protocol: the tenants' governed tables, masked by their policies.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// Address (IP and port) the endpoint listens on; an empty string
    /// disables it.
    ///
    /// Default `"127.0.0.1:5433"`.
    pub listen: String,
    /// Connections served at once; more are refused with SQLSTATE 53300.
    /// Must be at least 1.
    ///
    /// Default `64`.
    pub max_connections: usize,
    /// PEM file of the endpoint's TLS certificate chain; with
    /// `tls_key_file`, the endpoint speaks TLS and requires it (a client
    /// without TLS is refused, as `hostssl` lines do). Empty: no TLS (keep
    /// the endpoint on loopback then).
    ///
    /// Default `""`.
    pub tls_cert_file: String,
    /// PEM file of the certificate's private key.
    ///
    /// Default `""`.
    pub tls_key_file: String,
    /// Connections one tenant may hold at once, so one tenant cannot take
    /// them all; more are refused with SQLSTATE 53300. Must be at least 1.
    ///
    /// Default `16`.
    pub tenant_connections: usize,
    /// Memory in MiB all statements together may use for sorts, joins and
    /// aggregates; a statement that needs more fails with "Resources
    /// exhausted" rather than the process running out of memory.
    ///
    /// Default `1024`.
    pub memory_limit_mb: usize,
    /// Milliseconds a statement may run; longer ones are cancelled with
    /// SQLSTATE 57014. `0`: no limit.
    ///
    /// Default `300000`.
    pub statement_timeout_ms: u64,
    /// Milliseconds between writes of the query audit (`audit/queries`
    /// under the lake root).
    ///
    /// Default `1000`.
    pub audit_flush_ms: u64,
    /// `[sql.connections]`: the URLs of the PostgreSQL databases governed
    /// tables are read from, by name (`connection` of a governed table),
    /// as libpq takes them (`sslmode`, `sslrootcert` included). They carry
    /// credentials: give them as `${ENV}` or `${file:PATH}` references.
    pub connections: BTreeMap<String, String>,
    /// `[sql.tenant_sources]`: what each tenant may register as governed
    /// tables, comma-separated: connection names of `[sql.connections]`
    /// and URL prefixes of Delta tables and Parquet files
    /// (`acme = "warehouse, s3://acme-lake/"`). A tenant not listed may
    /// register nothing: a tenant's admin never reaches another tenant's
    /// databases, buckets or the server's files.
    pub tenant_sources: BTreeMap<String, String>,
}

impl SqlConfig {
    /// Whether `tenant` may serve a table from `connection` (PostgreSQL)
    /// or at `location` (Delta, Parquet), by `tenant_sources`; else why not.
    pub fn source_allowed(
        &self,
        tenant: &str,
        connection: Option<&str>,
        location: &str,
    ) -> Result<(), String> {
        let granted: Vec<&str> = self
            .tenant_sources
            .get(tenant)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(c) = connection {
            if granted.iter().any(|g| !g.contains("://") && *g == c) {
                return Ok(());
            }
            return Err(format!(
                "connection {c:?} is not among tenant {tenant:?}'s sources (sql.tenant_sources)"
            ));
        }
        let url = url::Url::parse(location)
            .map_err(|e| format!("location {location:?} is not a URL: {e}"))?;
        // The parsed URL has its dot segments resolved.
        let location = url.as_str();
        let under = |prefix: &str| {
            let dir = prefix.trim_end_matches('/');
            location == dir || location.starts_with(&format!("{dir}/"))
        };
        if granted.iter().any(|g| g.contains("://") && under(g)) {
            return Ok(());
        }
        Err(format!(
            "location {location} is not under tenant {tenant:?}'s sources (sql.tenant_sources)"
        ))
    }
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5433".to_owned(),
            max_connections: 64,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tenant_connections: 16,
            memory_limit_mb: 1024,
            statement_timeout_ms: 300_000,
            audit_flush_ms: 1_000,
            connections: BTreeMap::new(),
            tenant_sources: BTreeMap::new(),
        }
    }
}

/// `[trino]`: Trino clusters whose `opa` access control asks Lily
/// (`/v1/tenants/{tenant}/trino/...`): how their names and identities map
/// onto the tenant's catalog and roles.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrinoConfig {
    /// Deny every operation of a Trino identity that has no role in the
    /// tenant (by `roles`). Off: Lily answers masks only, and allows what
    /// Trino asks (its other access control stays Trino's).
    ///
    /// Default `false`.
    pub deny_unmapped: bool,
    /// `[trino.catalogs]`: per tenant, which Trino catalog is which
    /// database of the catalog, comma-separated `trino_catalog=database`
    /// (`acme = "lakehouse=analytics"`): Trino's `lakehouse.sales.customers`
    /// is then the asset `analytics.sales.customers`. A catalog not listed
    /// is taken as named.
    pub catalogs: BTreeMap<String, String>,
    /// `[trino.impersonators]`: per tenant, the Trino users allowed to
    /// impersonate others, comma-separated (a BI tool's service account).
    /// Nobody else may: the impersonated user's roles would unmask for them.
    pub impersonators: BTreeMap<String, String>,
    /// `[trino.roles]`: per tenant, the roles of Trino identities,
    /// comma-separated `user:NAME=ROLE` and `group:NAME=ROLE`
    /// (`acme = "user:ana=pii_reader, group:privacy=pii_reader"`).
    pub roles: BTreeMap<String, String>,
}

/// One `user:NAME=ROLE` or `group:NAME=ROLE` entry of `trino.roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrinoRoleGrant {
    /// A Trino user has a role.
    User(String, String),
    /// Members of a Trino group have a role.
    Group(String, String),
}

/// Splits a comma-separated list of `KEY=VALUE` entries.
fn pairs<'a>(list: &'a str, what: &str) -> Result<Vec<(&'a str, &'a str)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| format!("{what} entry {e:?} is not KEY=VALUE"))
        })
        .collect()
}

/// An error naming the first entry of `list` that is not `KEY=VALUE`.
pub(crate) fn check_pairs(list: &str, what: &str) -> Result<(), String> {
    pairs(list, what).map(|_| ())
}

impl TrinoConfig {
    /// The catalog database a Trino catalog of `tenant` stands for.
    pub fn catalog_database<'a>(&'a self, tenant: &str, catalog: &'a str) -> &'a str {
        self.catalogs
            .get(tenant)
            .and_then(|list| pairs(list, "trino.catalogs").ok())
            .and_then(|p| p.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(catalog)))
            .map_or(catalog, |(_, v)| v)
    }

    /// `tenant`'s role grants (an unparsable list: an error naming the entry).
    pub fn role_grants(&self, tenant: &str) -> Result<Vec<TrinoRoleGrant>, String> {
        let Some(list) = self.roles.get(tenant) else {
            return Ok(Vec::new());
        };
        pairs(list, "trino.roles")?
            .into_iter()
            .map(|(who, role)| match who.split_once(':') {
                Some(("user", name)) => Ok(TrinoRoleGrant::User(name.into(), role.into())),
                Some(("group", name)) => Ok(TrinoRoleGrant::Group(name.into(), role.into())),
                _ => Err(format!(
                    "trino.roles entry {who:?}={role:?}: say user:NAME=ROLE or group:NAME=ROLE"
                )),
            })
            .collect()
    }

    /// Whether `user` may impersonate other users in `tenant`.
    pub fn may_impersonate(&self, tenant: &str, user: &str) -> bool {
        self.impersonators
            .get(tenant)
            .is_some_and(|list| list.split(',').any(|u| u.trim() == user))
    }

    /// The roles in `tenant` of the Trino identity `user` with `groups`.
    pub fn roles_of(&self, tenant: &str, user: &str, groups: &[String]) -> Vec<String> {
        let mut roles: Vec<String> = self
            .role_grants(tenant)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|g| match g {
                TrinoRoleGrant::User(u, r) if u == user => Some(r),
                TrinoRoleGrant::Group(g, r) if groups.contains(&g) => Some(r),
                _ => None,
            })
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

/// `[auth]`: JWT bearer tokens. API keys need no configuration: they are
/// created with `lily api-key create` and stored hashed in the metastore.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secrets that sign HS256 tokens, for development and tests.
    /// Empty: HS256 tokens are refused.
    ///
    /// Default `[]`.
    pub jwt_hs256_secrets: Vec<String>,
    /// JWKS URL of the OpenID Connect provider whose RS256 and ES256 tokens
    /// are accepted (Keycloak: `<realm>/protocol/openid-connect/certs`, Okta:
    /// `<issuer>/v1/keys`). Empty: none.
    ///
    /// Default `""`.
    pub jwks_url: String,
    /// How often in milliseconds the JWKS is fetched again. A token whose
    /// `kid` is not known also triggers a fetch, at most once per
    /// `jwks_min_refresh_ms`, so rotated keys are picked up at once.
    ///
    /// Default `300000`.
    pub jwks_refresh_ms: u64,
    /// Least time in milliseconds between two JWKS fetches.
    ///
    /// Default `5000`.
    pub jwks_min_refresh_ms: u64,
    /// Required `iss` claim: the OIDC provider's issuer URL. Required with
    /// a `jwks_url`: a provider (a shared Keycloak realm, say) issues tokens
    /// to other clients too, and only `iss` and `aud` tell Lily's apart.
    ///
    /// Default `""`.
    pub jwt_issuer: String,
    /// Required `aud` claim: the client id Lily's tokens are issued to.
    /// Required with a `jwks_url`.
    ///
    /// Default `""`.
    pub jwt_audience: String,
    /// Development only: accept JWKS-signed tokens whatever their `iss` and
    /// `aud` (any client of the provider with the right role claim gets in).
    ///
    /// Default `false`.
    pub insecure_any_issuer_and_audience: bool,
    /// Claim that holds the caller's grants, each `"<tenant>:<role>"` with
    /// role one of admin, steward, viewer, ingest; a string or a list.
    ///
    /// Default `"lily_roles"`.
    pub roles_claim: String,
    /// Clock skew in seconds allowed when checking `exp` and `nbf`.
    ///
    /// Default `30`.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_hs256_secrets: Vec::new(),
            jwks_url: String::new(),
            jwks_refresh_ms: 300_000,
            jwks_min_refresh_ms: 5_000,
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            insecure_any_issuer_and_audience: false,
            roles_claim: "lily_roles".to_owned(),
            leeway_secs: 30,
        }
    }
}

/// `[monte_carlo]`: `POST /v1/tenants/{tenant}/ingest/monte-carlo`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MonteCarloConfig {
    /// Signing secret of each tenant's webhook: `tenant = "secret"` (set
    /// them with `LILY_MONTE_CARLO__SECRETS__<TENANT>`). A tenant without a
    /// secret cannot receive Monte Carlo webhooks.
    ///
    /// Default: none.
    pub secrets: BTreeMap<String, String>,
    /// The pre-ingest transform that maps an event onto an incident.
    ///
    /// Default `"ingest/monte_carlo_incident"`.
    pub transform: String,
    /// How each tenant's Monte Carlo full table ids
    /// (`<database>:<schema>.<table>`) become catalog qualified names, when
    /// the warehouse's naming differs from the catalog's: `[monte_carlo.
    /// naming.<tenant>]`. A tenant without a rule maps `db:schema.table` to
    /// `db.schema.table`.
    ///
    /// Default: none.
    pub naming: BTreeMap<String, TableNaming>,
}

impl Default for MonteCarloConfig {
    fn default() -> Self {
        Self {
            secrets: BTreeMap::new(),
            transform: "ingest/monte_carlo_incident".to_owned(),
            naming: BTreeMap::new(),
        }
    }
}

/// `[monte_carlo.naming.<tenant>]`: a warehouse table id
/// `<database>:<schema>.<table>` becomes the qualified name
/// `<prefix><database alias>.<schema>.<table>`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TableNaming {
    /// Put before every name, e.g. `"snowflake."` when the catalog's
    /// qualified names start with the platform.
    ///
    /// Default `""`.
    pub prefix: String,
    /// The catalog's name for a warehouse database: `analytics_prod =
    /// "analytics"`. An empty alias drops the database from the name.
    /// Databases not listed keep their name.
    ///
    /// Default: none.
    pub databases: BTreeMap<String, String>,
}

impl TableNaming {
    /// The qualified name of Monte Carlo's full table id `id`, or `None` when
    /// `id` is not of the form `<database>:<rest>`.
    pub fn qualified_name(&self, id: &str) -> Option<String> {
        let (database, rest) = id.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        let database = self
            .databases
            .get(database)
            .map_or(database, String::as_str);
        Some(if database.is_empty() {
            format!("{}{rest}", self.prefix)
        } else {
            format!("{}{database}.{rest}", self.prefix)
        })
    }
}

/// `[okta]`: `/v1/tenants/{tenant}/ingest/okta`, an Okta Event Hook. Okta
/// sends an API key of the tenant (role ingest) in its Authorization header.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OktaConfig {
    /// What a deactivated or deleted user's assets get: `"remove"` takes
    /// the user out of their owners, `"flag"` keeps the owner and lists the
    /// user under the asset attribute `deactivated_owners`.
    ///
    /// Default `"remove"`.
    pub on_deactivate: DeactivatedOwner,
}

/// What happens to the assets a deactivated user owns.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DeactivatedOwner {
    /// Removed from the owners (`"remove"`).
    #[default]
    Remove,
    /// Kept, and listed in the attribute `deactivated_owners` (`"flag"`).
    Flag,
}

/// `[jira]`: `POST /v1/tenants/{tenant}/ingest/jira`, a JIRA webhook.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JiraConfig {
    /// Secret of each tenant's JIRA webhook (`tenant = "secret"`), which JIRA
    /// uses to sign its requests (`X-Hub-Signature: sha256=...`). A tenant
    /// without one can still be reached with an API key.
    ///
    /// Default: none.
    pub secrets: BTreeMap<String, String>,
}

/// `[kafka_source]`: Monte Carlo events read from Kafka topics by a
/// consumer group; an offset is committed only once its event is written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, e.g. `"kafka-1:9092,kafka-2:9092"`; empty
    /// disables the source.
    ///
    /// Default `""`.
    pub brokers: String,
    /// Consumer group id.
    ///
    /// Default `"lily-inbound"`.
    pub group_id: String,
    /// Which tenant each topic's events belong to: `"topic" = "tenant"`.
    ///
    /// Default: none.
    pub topics: BTreeMap<String, String>,
    /// Extra librdkafka settings passed as they are (security.protocol,
    /// sasl.*, session.timeout.ms, ...).
    ///
    /// Default: none.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "lily-inbound".to_owned(),
            topics: BTreeMap::new(),
            options: BTreeMap::new(),
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address (IP and port) the Prometheus endpoint listens on, e.g.
    /// `"0.0.0.0:9187"` or `"[::1]:9187"`; an empty string disables it.
    ///
    /// Default `"127.0.0.1:9187"`.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9187".to_owned(),
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format of log lines: `"text"` or `"json"`.
    ///
    /// Default `"text"`.
    pub format: LogFormat,
    /// Which log lines are kept: a `tracing` `EnvFilter` directive such as
    /// `"info"` or `"warn,lily_cdc=debug"`.
    ///
    /// Default `"info"`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Output format of log lines.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`"text"`).
    #[default]
    Text,
    /// One JSON object per line (`"json"`).
    Json,
}
