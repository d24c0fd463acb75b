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

        for (key, listen) in [("api.listen", &self.api.listen)] {
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
        at_least("api.pool_size", self.api.pool_size as u64, 1)?;
        at_least("auth.jwks_refresh_ms", self.auth.jwks_refresh_ms, 1000)?;
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

        let es = &self.elasticsearch;
        for u in &es.urls {
            if url::Url::parse(u).is_err() {
                return Err(invalid_str(
                    "elasticsearch.urls",
                    u,
                    "give node URLs such as \"https://es-1.example:9200\"",
                ));
            }
        }
        for (key, value) in [
            ("elasticsearch.index_prefix", &es.index_prefix),
            ("elasticsearch.index", &es.index),
        ] {
            if !is_index_part(value) {
                return Err(invalid_str(
                    key,
                    value,
                    "index names take lower-case letters, digits, - and _, and do not start with - or _",
                ));
            }
        }
        if !["", "true", "wait_for"].contains(&es.refresh.as_str()) {
            return Err(invalid_str(
                "elasticsearch.refresh",
                &es.refresh,
                "one of \"\" (the index's refresh interval), \"wait_for\", \"true\"",
            ));
        }
        at_least("elasticsearch.flush_interval_ms", es.flush_interval_ms, 1)?;
        at_least("elasticsearch.flush_max_docs", es.flush_max_docs as u64, 1)?;
        at_least(
            "elasticsearch.bulk_max_bytes",
            es.bulk_max_bytes as u64,
            1024,
        )?;

        let ks = &self.kafka_sink;
        if ks.topic_prefix.is_empty()
            || !ks
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid_str(
                "kafka_sink.topic_prefix",
                &ks.topic_prefix,
                "topic names take letters, digits, '.', '_' and '-'",
            ));
        }
        if !["json", "avro"].contains(&ks.format.as_str()) {
            return Err(invalid_str(
                "kafka_sink.format",
                &ks.format,
                "one of \"json\", \"avro\"",
            ));
        }
        at_least("kafka_sink.partitions", ks.partitions.max(0) as u64, 1)?;
        at_least(
            "kafka_sink.replication_factor",
            ks.replication_factor.max(0) as u64,
            1,
        )?;
        at_least("kafka_sink.flush_interval_ms", ks.flush_interval_ms, 1)?;

        for (name, target) in &self.notify {
            if !is_slot_name(&name.replace('-', "_")) {
                return Err(invalid_str(
                    "notify",
                    name,
                    "a target name is 1-63 characters of a-z, 0-9, - and _",
                ));
            }
            if target.filter.trim().is_empty() {
                return Err(invalid_str(
                    &format!("notify.{name}.filter"),
                    &target.filter,
                    "name the transform that chooses the target's notifications",
                ));
            }
            if !(target.rate_per_sec >= 0.0 && target.rate_per_sec.is_finite()) {
                return Err(ConfigError::Invalid {
                    key: format!("notify.{name}.rate_per_sec"),
                    value: target.rate_per_sec.to_string(),
                    message: "deliveries per second: 0 (the vendor's pace) or more".into(),
                });
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

/// A part of an Elasticsearch index name.
fn is_index_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value >= min {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        message: format!("it must be at least {min}"),
    })
}

fn invalid_str(key: &str, value: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: toml::Value::String(value.to_owned()).to_string(),
        message: message.to_owned(),
    }
}
