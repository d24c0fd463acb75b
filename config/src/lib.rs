//! Lily's configuration: one TOML file, every setting also overridable by an
//! environment variable.
//!
//! # The file
//!
//! The file has one table per section: `[postgres]`, `[replication]`,
//! `[lake]`, `[metrics]` and `[log]`. Every key is optional and defaults to
//! the value documented on its field (see [`LilyConfig`]); an unknown section
//! or key is an error, so a typo never goes unnoticed. The file `lily.toml`
//! next to this crate's `Cargo.toml` lists every key with its default.
//!
//! ```toml
//! [replication]
//! slot = "lily"
//! batch_max_rows = 8192
//!
//! [lake]
//! root = "s3://my-bucket/lily"
//!
//! [lake.storage_options]
//! aws_region = "eu-west-1"
//! ```
//!
//! # Environment overrides
//!
//! After the file is read, every variable named `LILY_<SECTION>__<KEY>` sets
//! `<section>.<key>`, taking precedence over the file:
//!
//! * the section and the key are joined by a **double** underscore; the key
//!   is the field name upper-cased, its single underscores kept:
//!   `LILY_REPLICATION__BATCH_MAX_ROWS=500`, `LILY_POSTGRES__URL=postgres://…`;
//! * a map setting takes its entry name as a third part, lower-cased:
//!   `LILY_LAKE__STORAGE_OPTIONS__AWS_REGION=eu-west-1` sets
//!   `lake.storage_options.aws_region`;
//! * the value is read as the setting's type: integer settings take a whole
//!   number (`LILY_REPLICATION__BATCH_MAX_ROWS=abc` is an error naming the
//!   variable), string settings take the value verbatim (an empty value is an
//!   empty string, e.g. `LILY_METRICS__LISTEN=` disables the metrics
//!   endpoint);
//! * a variable naming no setting (`LILY_REPLICATION__XYZ`) is an error;
//! * variables starting with `LILY_` that contain no `__` (such as
//!   `LILY_PG_BIN`) belong to other tools and are ignored.
//!
//! Finally the result is checked by [`LilyConfig::validate`].

mod env;
mod error;
mod model;
pub mod references;
mod validate;

use std::path::Path;

pub use env::coerce;
pub use env::{ENV_PREFIX, ENV_SEPARATOR};
pub use error::ConfigError;
pub use model::{
    ApiConfig, AuthConfig, BulkConfig, DeactivatedOwner, JiraConfig, KafkaSourceConfig, LakeConfig,
    LilyConfig, LogConfig, LogFormat, MetricsConfig, MonteCarloConfig, OktaConfig, PostgresConfig,
    PropagatedAttribute, PropagationConfig, ReplicationConfig, SqlConfig, TableNaming,
    TransformsConfig, TrinoConfig, TrinoRoleGrant,
};
pub use validate::{PROPAGATABLE_ATTRIBUTES, at_least, invalid_str, is_index_part, is_sink_name};

impl LilyConfig {
    /// Loads `path` if given (an error if it does not exist), else the
    /// defaults; then applies the environment overrides from the process
    /// environment; then validates.
    pub fn load(path: Option<&Path>) -> Result<LilyConfig, ConfigError> {
        Self::load_with_env(path, process_env()?)
    }

    /// Same as [`LilyConfig::load`], with an explicit environment (for tests):
    /// an iterator of `(name, value)`.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<LilyConfig, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                from_text(&text, Some(path), env)
            }
            None => from_text("", None, env),
        }
    }

    /// Parses TOML text, applies the environment overrides of `env`, then
    /// validates (used by [`LilyConfig::load`]; public for tests).
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<LilyConfig, ConfigError> {
        from_text(text, None, env)
    }

    /// The TOML of this config, every key included, e.g. for `lily demo` to
    /// write its config file. [`LilyConfig::from_toml_str`] reads it back to
    /// an equal config.
    ///
    /// # Panics
    ///
    /// If an integer setting exceeds `i64::MAX` (TOML integers are 64-bit
    /// signed), which no loaded configuration can.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("integer settings fit in a TOML integer")
    }
}

fn from_text(
    text: &str,
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<LilyConfig, ConfigError> {
    let parse_err = |err: toml::de::Error| ConfigError::Parse {
        path: path.map(Path::to_owned),
        message: err.to_string(),
    };
    // Deserializing the text directly gives errors in the file (unknown keys,
    // wrong types) with their line and column.
    let from_file: LilyConfig = toml::from_str(text).map_err(parse_err)?;
    let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;

    let env: Vec<(String, String)> = env.into_iter().collect();
    let applied = env::apply(&mut table, env.iter().cloned())?;
    // `${NAME}` and `${file:PATH}` in any value: the given environment
    // first, then the process's.
    let given = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let mut root = toml::Value::Table(table);
    let expanded = references::expand(&mut root, "", &given).map_err(|(key, message)| {
        ConfigError::Invalid {
            key,
            value: "\"${...}\"".to_owned(),
            message,
        }
    })?;
    let toml::Value::Table(table) = root else {
        unreachable!("expanding a table gives a table")
    };
    let config = if applied.is_empty() && !expanded {
        from_file
    } else {
        table
            .try_into()
            .map_err(|err: toml::de::Error| ConfigError::Parse {
                path: path.map(Path::to_owned),
                message: format!("after applying the environment overrides: {err}"),
            })?
    };

    config.validate().map_err(|err| match err {
        // Say where a bad value came from when it was not the file.
        ConfigError::Invalid {
            key,
            value,
            message,
        } => {
            let message = match applied.iter().rev().find(|a| a.key == key) {
                Some(a) => format!("{message} (set by environment variable {})", a.var),
                None => message,
            };
            ConfigError::Invalid {
                key,
                value,
                message,
            }
        }
        err => err,
    })?;
    Ok(config)
}

/// The process environment's `LILY_*` configuration variables. A
/// configuration variable whose value is not UTF-8 is an error; other
/// non-UTF-8 variables are skipped.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) || !name.contains(ENV_SEPARATOR) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_owned(),
            message: "the value is not valid UTF-8; set it to UTF-8 text".to_owned(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    const EXAMPLE: &str = include_str!("../lily.toml");

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn err_text(text: &str, vars: &[(&str, &str)]) -> String {
        LilyConfig::from_toml_str(text, env(vars))
            .expect_err("expected an error")
            .to_string()
    }

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("lily.toml")
    }

    #[test]
    fn defaults() {
        let c = LilyConfig::default();
        assert_eq!(c.postgres.url, "postgres://postgres@127.0.0.1:5432/lily");
        assert_eq!(c.postgres.tenant_role, "lily_tenant");
        assert_eq!(c.replication.slot, "lily");
        assert_eq!(c.replication.publication, "lily_metastore");
        assert_eq!(c.replication.batch_max_rows, 8192);
        assert_eq!(c.replication.batch_max_bytes, 8 << 20);
        assert_eq!(c.replication.batch_max_wait_ms, 20);
        assert_eq!(c.replication.status_interval_ms, 1000);
        assert_eq!(c.replication.heartbeat_interval_ms, 10_000);
        assert_eq!(c.replication.channel_capacity, 16);
        assert_eq!(c.replication.max_lag_bytes, 1 << 30);
        assert_eq!(c.lake.root, "./.lily/lake");
        assert_eq!(c.lake.flush_interval_ms, 500);
        assert_eq!(c.lake.flush_max_rows, 50_000);
        assert!(c.lake.storage_options.is_empty());
        assert_eq!(c.metrics.listen, "127.0.0.1:9187");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        c.validate().unwrap();

        assert_eq!(LilyConfig::from_toml_str("", no_env()).unwrap(), c);
        assert_eq!(LilyConfig::load_with_env(None, no_env()).unwrap(), c);
    }

    #[test]
    fn example_file_is_the_defaults() {
        let parsed = LilyConfig::from_toml_str(EXAMPLE, no_env()).unwrap();
        assert_eq!(parsed, LilyConfig::default());
        // Every key is present, not just defaulted.
        let keys: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let defaults = toml::Table::try_from(LilyConfig::default()).unwrap();
        assert_eq!(
            keys, defaults,
            "lily.toml must list every key with its default"
        );

        let loaded = LilyConfig::load_with_env(Some(&example_path()), no_env()).unwrap();
        assert_eq!(loaded, LilyConfig::default());
    }

    #[test]
    fn file_parse() {
        let text = r#"
            [postgres]
            url = "host=db user=lily dbname=lily"

            [replication]
            slot = "lily_2"
            batch_max_rows = 100
            batch_max_wait_ms = 0

            [lake]
            root = "s3://bucket/lake"

            [lake.storage_options]
            aws_region = "eu-west-1"
            AWS_ENDPOINT = "http://127.0.0.1:9000"

            [metrics]
            listen = ""

            [log]
            format = "json"
            level = "warn,lily_cdc=debug"
        "#;
        let c = LilyConfig::from_toml_str(text, no_env()).unwrap();
        let mut want = LilyConfig::default();
        want.postgres.url = "host=db user=lily dbname=lily".into();
        want.replication.slot = "lily_2".into();
        want.replication.batch_max_rows = 100;
        want.replication.batch_max_wait_ms = 0;
        want.lake.root = "s3://bucket/lake".into();
        want.lake.storage_options = BTreeMap::from([
            ("aws_region".to_owned(), "eu-west-1".to_owned()),
            (
                "AWS_ENDPOINT".to_owned(),
                "http://127.0.0.1:9000".to_owned(),
            ),
        ]);
        want.metrics.listen = String::new();
        want.log.format = LogFormat::Json;
        want.log.level = "warn,lily_cdc=debug".into();
        assert_eq!(c, want);
    }

    #[test]
    fn a_jwks_needs_https_off_this_machine_and_an_issuer_and_audience() {
        let load = |text: &str| LilyConfig::from_toml_str(text, no_env());
        let e = load("[auth]\njwks_url = \"https://idp.example/certs\"").unwrap_err();
        assert!(e.to_string().contains("auth.jwt_issuer"), "{e}");
        let e = load(
            "[auth]\njwks_url = \"https://idp.example/certs\"\njwt_issuer = \"https://idp.example\"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("auth.jwt_audience"), "{e}");
        let both = "jwt_issuer = \"https://idp.example\"\njwt_audience = \"lily\"";
        assert!(
            load(&format!(
                "[auth]\njwks_url = \"https://idp.example/certs\"\n{both}"
            ))
            .is_ok()
        );
        let e = load(&format!(
            "[auth]\njwks_url = \"http://idp.example/certs\"\n{both}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        for local in [
            "http://127.0.0.1:8080/certs",
            "http://localhost/certs",
            "http://[::1]/certs",
        ] {
            assert!(
                load(&format!("[auth]\njwks_url = \"{local}\"\n{both}")).is_ok(),
                "{local}"
            );
        }
        assert!(
            load("[auth]\njwks_url = \"https://idp.example/certs\"\ninsecure_any_issuer_and_audience = true")
                .is_ok()
        );
    }

    #[test]
    fn empty_or_unexpanded_webhook_secrets_are_refused() {
        for text in [
            "[monte_carlo.secrets]\nacme = \"\"",
            "[jira.secrets]\nacme = \"${JIRA_SECRET}\"",
        ] {
            let e = LilyConfig::from_toml_str(text, no_env()).unwrap_err();
            assert!(e.to_string().contains("secrets.acme"), "{e}");
        }
        let e = LilyConfig::from_toml_str("[jira.secrets]\nacme = \"${JIRA_SECRET}\"", no_env())
            .unwrap_err();
        assert!(
            e.to_string().contains("JIRA_SECRET is not set"),
            "names the missing variable: {e}"
        );
    }

    #[test]
    fn any_secret_reads_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mc");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let text = format!(
            "[monte_carlo.secrets]\nacme = \"${{file:{}}}\"\n[jira.secrets]\nacme = \"${{JIRA_ACME}}\"\n\
             [auth]\njwt_hs256_secrets = [\"${{HS}}\"]",
            file.display()
        );
        let env = [("JIRA_ACME", "from-the-env"), ("HS", "hs-secret")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = LilyConfig::from_toml_str(&text, env).unwrap();
        assert_eq!(c.monte_carlo.secrets["acme"], "from-a-file");
        assert_eq!(c.jira.secrets["acme"], "from-the-env");
        assert_eq!(c.auth.jwt_hs256_secrets, vec!["hs-secret".to_owned()]);
        let e = LilyConfig::from_toml_str(
            "[monte_carlo.secrets]\nacme = \"${file:/no/such/secret}\"",
            no_env(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("monte_carlo.secrets.acme"), "{e}");
        assert!(e.to_string().contains("/no/such/secret"), "{e}");
    }

    #[test]
    fn monte_carlo_naming_maps_full_table_ids() {
        let text = r#"
            [monte_carlo.naming.acme]
            prefix = "snowflake."
            databases = { analytics_prod = "analytics", scratch = "" }
        "#;
        let c = LilyConfig::from_toml_str(text, no_env()).unwrap();
        let rule = &c.monte_carlo.naming["acme"];
        assert_eq!(
            rule.qualified_name("analytics_prod:sales.orders")
                .as_deref(),
            Some("snowflake.analytics.sales.orders")
        );
        assert_eq!(
            rule.qualified_name("other:s.t").as_deref(),
            Some("snowflake.other.s.t")
        );
        assert_eq!(
            rule.qualified_name("scratch:s.t").as_deref(),
            Some("snowflake.s.t")
        );
        assert_eq!(rule.qualified_name("orders"), None);
        assert_eq!(
            TableNaming::default()
                .qualified_name("analytics:sales.orders")
                .as_deref(),
            Some("analytics.sales.orders")
        );
        let err = err_text("[monte_carlo.naming.acme]\nprefx = \"x\"\n", &[]);
        assert!(err.contains("prefx"), "{err}");
    }

    #[test]
    fn file_load_from_disk() {
        let dir = std::env::temp_dir().join(format!("lily-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lily.toml");
        std::fs::write(&path, "[replication]\nchannel_capacity = 4\n").unwrap();
        let c = LilyConfig::load_with_env(Some(&path), no_env()).unwrap();
        assert_eq!(c.replication.channel_capacity, 4);

        std::fs::write(&path, "[replication]\nchannel_capacity = \"four\"\n").unwrap();
        let err = LilyConfig::load_with_env(Some(&path), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { path: Some(ref p), .. } if *p == path));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_error() {
        let path = Path::new("/nonexistent/lily.toml");
        let err = LilyConfig::load_with_env(Some(path), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/lily.toml"), "{err}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let msg = err_text("[replication]\nslot = \n", &[]);
        assert!(msg.contains("line 2, column"), "{msg}");
    }

    #[test]
    fn unknown_key_in_file() {
        let msg = err_text("[replication]\nslot = \"lily\"\nxyz = 1\n", &[]);
        assert!(msg.contains("unknown field `xyz`"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let msg = err_text("[replicaton]\nslot = \"lily\"\n", &[]);
        assert!(msg.contains("unknown field `replicaton`"), "{msg}");
    }

    #[test]
    fn env_override_int_string_map_enum() {
        let c = LilyConfig::from_toml_str(
            "[replication]\nbatch_max_rows = 100\nslot = \"from_file\"\n",
            env(&[
                ("LILY_REPLICATION__BATCH_MAX_ROWS", "500"),
                ("LILY_POSTGRES__URL", "postgres://u@h/db"),
                ("LILY_LAKE__STORAGE_OPTIONS__AWS_REGION", "eu-west-1"),
                ("LILY_LOG__FORMAT", "json"),
                ("LILY_METRICS__LISTEN", ""),
                // Other tools' variables and unrelated ones are ignored.
                ("LILY_PG_BIN", "/usr/lib/postgresql/17/bin"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.replication.batch_max_rows, 500);
        assert_eq!(c.replication.slot, "from_file");
        assert_eq!(c.postgres.url, "postgres://u@h/db");
        assert_eq!(
            c.lake.storage_options,
            BTreeMap::from([("aws_region".to_owned(), "eu-west-1".to_owned())])
        );
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.metrics.listen, "");
    }

    #[test]
    fn env_map_entries_merge_with_file() {
        let c = LilyConfig::from_toml_str(
            "[lake.storage_options]\naws_region = \"us-east-1\"\naws_endpoint = \"http://x\"\n",
            env(&[("LILY_LAKE__STORAGE_OPTIONS__AWS_REGION", "eu-west-1")]),
        )
        .unwrap();
        assert_eq!(c.lake.storage_options["aws_region"], "eu-west-1");
        assert_eq!(c.lake.storage_options["aws_endpoint"], "http://x");
    }

    #[test]
    fn env_last_duplicate_wins() {
        let c = LilyConfig::from_toml_str(
            "",
            env(&[
                ("LILY_REPLICATION__SLOT", "first"),
                ("LILY_REPLICATION__SLOT", "second"),
            ]),
        )
        .unwrap();
        assert_eq!(c.replication.slot, "second");
    }

    #[test]
    fn bad_int_env_value() {
        let msg = err_text("", &[("LILY_REPLICATION__BATCH_MAX_ROWS", "abc")]);
        assert_eq!(
            msg,
            "environment variable LILY_REPLICATION__BATCH_MAX_ROWS: \"abc\" is not a valid integer for replication.batch_max_rows"
        );
        let msg = err_text("", &[("LILY_REPLICATION__MAX_LAG_BYTES", "-1")]);
        assert!(msg.contains("must be zero or more"), "{msg}");
    }

    #[test]
    fn bad_enum_env_value() {
        let msg = err_text("", &[("LILY_LOG__FORMAT", "yaml")]);
        assert!(
            msg.starts_with("environment variable LILY_LOG__FORMAT: \"yaml\" is not a valid value for log.format"),
            "{msg}"
        );
        assert!(msg.contains("`text`") && msg.contains("`json`"), "{msg}");
    }

    #[test]
    fn unknown_env_key() {
        let err =
            LilyConfig::from_toml_str("", env(&[("LILY_REPLICATION__XYZ", "1")])).unwrap_err();
        assert!(matches!(err, ConfigError::Env { ref var, .. } if var == "LILY_REPLICATION__XYZ"));
        assert_eq!(
            err.to_string(),
            "environment variable LILY_REPLICATION__XYZ: no such setting replication.xyz"
        );
        let msg = err_text("", &[("LILY_NOPE__SLOT", "x")]);
        assert_eq!(
            msg,
            "environment variable LILY_NOPE__SLOT: no such setting nope.slot"
        );
        let msg = err_text("", &[("LILY_REPLICATION__SLOT__X", "x")]);
        assert_eq!(
            msg,
            "environment variable LILY_REPLICATION__SLOT__X: no such setting replication.slot.x"
        );
        let msg = err_text("", &[("LILY_LAKE__STORAGE_OPTIONS", "x")]);
        assert!(msg.contains("LILY_LAKE__STORAGE_OPTIONS__<NAME>"), "{msg}");
    }

    #[test]
    fn validation_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[replication]\nslot = \"My-Slot\"",
                "replication.slot",
                "invalid setting replication.slot = \"My-Slot\": a slot name is 1-63 characters of a-z, 0-9 and _",
            ),
            ("[replication]\nslot = \"\"", "replication.slot", ""),
            (
                "[replication]\npublication = \"1pub\"",
                "replication.publication",
                "",
            ),
            (
                "[replication]\npublication = \"a;drop\"",
                "replication.publication",
                "",
            ),
            (
                "[postgres]\ntenant_role = \"Tenant\"",
                "postgres.tenant_role",
                "",
            ),
            (
                "[replication]\nbatch_max_rows = 0",
                "replication.batch_max_rows",
                "invalid setting replication.batch_max_rows = 0: it must be at least 1",
            ),
            (
                "[replication]\nbatch_max_bytes = 1023",
                "replication.batch_max_bytes",
                "",
            ),
            (
                "[replication]\nchannel_capacity = 0",
                "replication.channel_capacity",
                "",
            ),
            (
                "[replication]\nstatus_interval_ms = 0",
                "replication.status_interval_ms",
                "",
            ),
            ("[lake]\nroot = \"\"", "lake.root", ""),
            ("[lake]\nroot = \"s3://bucket:99999/x\"", "lake.root", ""),
            ("[lake]\nflush_max_rows = 0", "lake.flush_max_rows", ""),
            (
                "[metrics]\nlisten = \"localhost:9187\"",
                "metrics.listen",
                "",
            ),
        ];
        for (text, want_key, want_msg) in cases {
            let err = LilyConfig::from_toml_str(text, no_env()).unwrap_err();
            match &err {
                ConfigError::Invalid { key, .. } => assert_eq!(key, want_key, "{text}"),
                other => panic!("{text}: expected Invalid, got {other:?}"),
            }
            if !want_msg.is_empty() {
                assert_eq!(err.to_string(), *want_msg);
            }
        }

        // The edges that are allowed.
        let ok = "[replication]\nslot = \"0_lily\"\nbatch_max_bytes = 1024\n\
                  [lake]\nroot = \"file:///tmp/lake\"\n[metrics]\nlisten = \"[::]:9187\"\n";
        LilyConfig::from_toml_str(ok, no_env()).unwrap();
        LilyConfig::from_toml_str("[metrics]\nlisten = \"\"", no_env()).unwrap();
    }

    #[test]
    fn validation_error_from_env_names_the_variable() {
        let msg = err_text("", &[("LILY_REPLICATION__SLOT", "Bad")]);
        assert_eq!(
            msg,
            "invalid setting replication.slot = \"Bad\": a slot name is 1-63 characters of a-z, 0-9 and _ \
             (set by environment variable LILY_REPLICATION__SLOT)"
        );
    }

    #[test]
    fn to_toml_round_trips() {
        let mut c = LilyConfig::default();
        c.replication.batch_max_rows = 10;
        c.lake.root = "/tmp/lily \"lake\"".into();
        c.lake
            .storage_options
            .insert("aws_region".into(), "eu-west-1".into());
        c.log.format = LogFormat::Json;
        let text = c.to_toml();
        assert_eq!(LilyConfig::from_toml_str(&text, no_env()).unwrap(), c);
        assert_eq!(
            LilyConfig::from_toml_str(&LilyConfig::default().to_toml(), no_env()).unwrap(),
            LilyConfig::default()
        );
    }
}

#[cfg(test)]
mod sql_sources_env {
    use super::*;

    #[test]
    fn tenant_sources_come_from_the_environment() {
        let c = LilyConfig::from_toml_str(
            "",
            vec![(
                "LILY_SQL__TENANT_SOURCES__ACME".to_owned(),
                "warehouse, file:///data/acme/".to_owned(),
            )],
        )
        .unwrap();
        assert_eq!(
            c.sql.tenant_sources.get("acme").map(String::as_str),
            Some("warehouse, file:///data/acme/")
        );
        assert!(
            c.sql
                .source_allowed("acme", Some("warehouse"), "public.t")
                .is_ok()
        );
        assert!(
            c.sql
                .source_allowed("acme", None, "file:///data/acme/t/")
                .is_ok()
        );
        assert!(
            c.sql
                .source_allowed("acme", None, "file:///data/acme-x/t/")
                .is_err()
        );
        assert!(
            c.sql
                .source_allowed("acme", None, "file:///data/acme/../x/")
                .is_err()
        );
        assert!(
            c.sql
                .source_allowed("beta", Some("warehouse"), "public.t")
                .is_err()
        );
    }
}
