//! Checks run after loading: values the types accept but Lily does not.

use std::net::SocketAddr;

use crate::{ConfigError, LilyConfig};

/// Asset columns whose values lineage propagation can carry.
pub const PROPAGATABLE_ATTRIBUTES: &[&str] = &["certificate", "owners"];

impl LilyConfig {
    /// Checks the values the types accept but Lily does not; the error names
    /// the first offending key and says what is allowed.
    ///
    /// [`LilyConfig::load`] and friends call this; call it yourself after
    /// building or changing a config in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let pg = &self.postgres;
        if !is_identifier(&pg.tenant_role) {
            return Err(invalid_str(
                "postgres.tenant_role",
                &pg.tenant_role,
                "a role name is 1-63 characters of a-z, 0-9 and _, not starting with a digit",
            ));
        }

        let repl = &self.replication;
        if !is_slot_name(&repl.slot) {
            return Err(invalid_str(
                "replication.slot",
                &repl.slot,
                "a slot name is 1-63 characters of a-z, 0-9 and _",
            ));
        }
        if !is_identifier(&repl.publication) {
            return Err(invalid_str(
                "replication.publication",
                &repl.publication,
                "a publication name is 1-63 characters of a-z, 0-9 and _, not starting with a digit",
            ));
        }
        at_least("replication.batch_max_rows", repl.batch_max_rows as u64, 1)?;
        at_least(
            "replication.batch_max_bytes",
            repl.batch_max_bytes as u64,
            1024,
        )?;
        at_least("replication.status_interval_ms", repl.status_interval_ms, 1)?;
        at_least(
            "replication.heartbeat_interval_ms",
            repl.heartbeat_interval_ms,
            1,
        )?;
        at_least(
            "replication.channel_capacity",
            repl.channel_capacity as u64,
            1,
        )?;

        if self.transforms.dir.trim().is_empty() {
            return Err(invalid_str(
                "transforms.dir",
                &self.transforms.dir,
                "it must name a folder",
            ));
        }
        for a in &self.propagation.attributes {
            if !PROPAGATABLE_ATTRIBUTES.contains(&a.name.as_str()) {
                return Err(invalid_str(
                    "propagation.attributes.name",
                    &a.name,
                    "an asset attribute that propagates is one of: certificate, owners",
                ));
            }
        }

        let lake = &self.lake;
        if lake.root.trim().is_empty() {
            return Err(invalid_str(
                "lake.root",
                &lake.root,
                "give a local folder such as \"./.lily/lake\" or an object-store URL such as \"s3://bucket/lake\"",
            ));
        }
        if lake.root.contains("://")
            && let Err(err) = url::Url::parse(&lake.root)
        {
            return Err(invalid_str(
                "lake.root",
                &lake.root,
                &format!(
                    "it looks like a URL but is not a valid one ({err}); \
                     use a form such as \"s3://bucket/path\" or \"file:///absolute/path\""
                ),
            ));
        }
        at_least("lake.flush_interval_ms", lake.flush_interval_ms, 1)?;
        at_least("lake.flush_max_rows", lake.flush_max_rows as u64, 1)?;

        for (key, listen) in [
            ("api.listen", &self.api.listen),
            ("sql.listen", &self.sql.listen),
        ] {
            if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
                return Err(invalid_str(
                    key,
                    listen,
                    "give an IP address and port such as \"127.0.0.1:8080\", or an empty string to disable it",
                ));
            }
        }
        at_least(
            "api.body_limit_bytes",
            self.api.body_limit_bytes as u64,
            1024,
        )?;
        at_least(
            "api.bulk_body_limit_bytes",
            self.api.bulk_body_limit_bytes as u64,
            self.api.body_limit_bytes as u64,
        )?;
        at_least("api.pool_size", self.api.pool_size as u64, 1)?;
        at_least("bulk.max_backlog_rows", self.bulk.max_backlog_rows, 1)?;
        at_least("sql.max_connections", self.sql.max_connections as u64, 1)?;
        at_least(
            "sql.tenant_connections",
            self.sql.tenant_connections as u64,
            1,
        )?;
        at_least("sql.memory_limit_mb", self.sql.memory_limit_mb as u64, 16)?;
        if self.sql.tls_cert_file.is_empty() != self.sql.tls_key_file.is_empty() {
            return Err(invalid_str(
                "sql.tls_key_file",
                &self.sql.tls_key_file,
                "give both sql.tls_cert_file and sql.tls_key_file, or neither",
            ));
        }
        at_least("sql.audit_flush_ms", self.sql.audit_flush_ms, 10)?;
        for tenant in self.trino.roles.keys() {
            if let Err(e) = self.trino.role_grants(tenant) {
                return Err(invalid_str(
                    &format!("trino.roles.{tenant}"),
                    &self.trino.roles[tenant],
                    &e,
                ));
            }
        }
        for (tenant, list) in &self.trino.catalogs {
            if let Err(e) = crate::model::check_pairs(list, "trino.catalogs") {
                return Err(invalid_str(&format!("trino.catalogs.{tenant}"), list, &e));
            }
        }
        for (name, url) in &self.sql.connections {
            if url.is_empty() {
                return Err(invalid_str(
                    &format!("sql.connections.{name}"),
                    url,
                    "give the URL of the PostgreSQL database governed tables are read from",
                ));
            }
        }
        at_least(
            "api.tenant_concurrency",
            self.api.tenant_concurrency as u64,
            1,
        )?;
        at_least("api.header_timeout_ms", self.api.header_timeout_ms, 100)?;
        at_least("api.body_timeout_ms", self.api.body_timeout_ms, 100)?;
        at_least("api.request_timeout_ms", self.api.request_timeout_ms, 100)?;
        at_least(
            "propagation.max_depth",
            self.propagation.max_depth as u64,
            1,
        )?;
        at_least(
            "propagation.max_assets",
            self.propagation.max_assets as u64,
            1,
        )?;
        at_least("auth.jwks_refresh_ms", self.auth.jwks_refresh_ms, 1000)?;
        if !self.auth.jwks_url.is_empty() {
            check_jwks(&self.auth)?;
        }
        if !self.auth.jwks_url.is_empty() && url::Url::parse(&self.auth.jwks_url).is_err() {
            return Err(invalid_str(
                "auth.jwks_url",
                &self.auth.jwks_url,
                "give an http(s) URL such as \"https://idp.example/realms/lily/protocol/openid-connect/certs\"",
            ));
        }
        if self.auth.roles_claim.trim().is_empty() {
            return Err(invalid_str(
                "auth.roles_claim",
                &self.auth.roles_claim,
                "name the token claim that holds \"tenant:role\" grants",
            ));
        }
        let ks = &self.kafka_source;
        if !ks.brokers.is_empty() && ks.topics.is_empty() {
            return Err(invalid_str(
                "kafka_source.topics",
                "",
                "with kafka_source.brokers set, map at least one topic to its tenant",
            ));
        }

        // An empty key lets anyone sign. (A reference to a variable or
        // file that is not there fails when the file is read.)
        for (section, secrets) in [
            ("monte_carlo.secrets", &self.monte_carlo.secrets),
            ("jira.secrets", &self.jira.secrets),
        ] {
            for (tenant, secret) in secrets {
                if secret.trim().is_empty() {
                    return Err(invalid_str(
                        &format!("{section}.{tenant}"),
                        "",
                        "a webhook secret must be set (an empty one would let anyone sign); \
                         give it as \"${NAME}\" or \"${file:/path}\", or set \
                         LILY_MONTE_CARLO__SECRETS__<TENANT>",
                    ));
                }
            }
        }
        for (i, secret) in self.auth.jwt_hs256_secrets.iter().enumerate() {
            if secret.trim().is_empty() {
                return Err(invalid_str(
                    &format!("auth.jwt_hs256_secrets[{i}]"),
                    "",
                    "an empty HS256 secret would let anyone sign a token",
                ));
            }
        }

        for name in self.sinks.keys() {
            if !is_sink_name(name) {
                return Err(invalid_str(
                    "sinks",
                    name,
                    "a sink name is 1-63 characters of a-z, 0-9, - and _, starting with a letter or a digit",
                ));
            }
        }

        let listen = &self.metrics.listen;
        if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
            return Err(invalid_str(
                "metrics.listen",
                listen,
                "give an IP address and port such as \"127.0.0.1:9187\" or \"[::]:9187\", \
                 or an empty string to disable the endpoint",
            ));
        }
        Ok(())
    }
}

/// A JWKS URL is fetched over HTTPS (its keys decide who gets in), except
/// on this machine; and tokens it signs must name Lily's issuer and
/// audience unless that is explicitly waived.
fn check_jwks(auth: &crate::AuthConfig) -> Result<(), ConfigError> {
    let url = url::Url::parse(&auth.jwks_url).map_err(|e| {
        invalid_str(
            "auth.jwks_url",
            &auth.jwks_url,
            &format!("not a URL ({e}); give the provider's https:// JWKS URL"),
        )
    })?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() != "https" && !loopback {
        return Err(invalid_str(
            "auth.jwks_url",
            &auth.jwks_url,
            "the keys that decide who gets in are fetched over https:// (plain http only on this machine)",
        ));
    }
    if auth.insecure_any_issuer_and_audience {
        return Ok(());
    }
    for (key, value, what) in [
        (
            "auth.jwt_issuer",
            &auth.jwt_issuer,
            "the provider's issuer URL (the tokens' iss)",
        ),
        (
            "auth.jwt_audience",
            &auth.jwt_audience,
            "the client id Lily's tokens are issued to (their aud)",
        ),
    ] {
        if value.trim().is_empty() {
            return Err(invalid_str(
                key,
                value,
                &format!(
                    "with auth.jwks_url set, give {what}: otherwise a token the provider issued to \
                     any other client is accepted (auth.insecure_any_issuer_and_audience = true \
                     waives this, for development only)"
                ),
            ));
        }
    }
    Ok(())
}

/// PostgreSQL replication slot names: lower-case letters, digits and
/// underscores, at most 63 (NAMEDATALEN - 1) characters.
fn is_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An identifier that needs no quoting in SQL and folds to itself: like a
/// slot name, but not starting with a digit.
fn is_identifier(name: &str) -> bool {
    is_slot_name(name) && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A sink's name, as in `[sinks.<name>]`: it names metrics, logs and dead
/// letters.
pub fn is_sink_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A part of an Elasticsearch index name.
pub fn is_index_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An error unless `value` (of setting `key`) is at least `min`.
pub fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value >= min {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        message: format!("it must be at least {min}"),
    })
}

/// The error of setting `key`, whose text `value` is wrong as `message` says.
pub fn invalid_str(key: &str, value: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: toml::Value::String(value.to_owned()).to_string(),
        message: message.to_owned(),
    }
}
