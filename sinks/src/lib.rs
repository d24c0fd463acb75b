//! Where changes leave Lily: the concrete sinks, one folder each, and the
//! [`registry`] that builds them from `[sinks.<name>]` tables.
//!
//! Each sink keeps the contract of [`lily_cdc::sink`]: the `Sink` trait,
//! at least once, idempotent by position, `Rejected` only for data no retry
//! can store (the runner dead-letters it and moves on).

pub mod builtin;
mod null;
pub mod registry;

pub use null::NullSink;

/// Declares the kinds of sink: each line is `folder::Config => Variant`,
/// the folder's `config.rs` holding the config struct, which implements
/// [`registry::SinkKind`]. The `type` of a `[sinks.<name>]` table is the
/// folder's name.
macro_rules! sink_kinds {
    ($( $(#[$doc:meta])* $module:ident::$config:ident => $variant:ident, )*) => {
        $( pub mod $module; )*

        /// The settings of one `[sinks.<name>]` table, by its `type`.
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum SinkConfig {
            $( $(#[$doc])* $variant($module::$config), )*
        }

        impl SinkConfig {
            /// Every `type` there is.
            pub const TYPES: &'static [&'static str] = &[$( stringify!($module), )*];

            /// The kind behind it.
            pub fn kind(&self) -> &dyn registry::SinkKind {
                match self {
                    $( SinkConfig::$variant(c) => c, )*
                }
            }

            /// Its `type`, which is also the source of its dead letters.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( SinkConfig::$variant(_) => stringify!($module), )*
                }
            }

            /// Reads the settings of a `type` from its table (without
            /// `type`), through TOML text so that an error shows the key
            /// and line it is about.
            pub fn parse(type_name: &str, table: toml::Table) -> Option<Result<SinkConfig, String>> {
                let text = match toml::to_string(&table) {
                    Ok(text) => text,
                    Err(e) => return Some(Err(e.to_string())),
                };
                match type_name {
                    $( stringify!($module) => Some(
                        toml::from_str::<$module::$config>(&text)
                            .map(SinkConfig::$variant)
                            .map_err(|e| e.to_string().trim_end().to_owned()),
                    ), )*
                    _ => None,
                }
            }

            /// The defaults of a `type`: they give values set from the
            /// environment their types.
            pub fn defaults(type_name: &str) -> Option<toml::Table> {
                match type_name {
                    $( stringify!($module) => toml::Table::try_from($module::$config::default()).ok(), )*
                    _ => None,
                }
            }
        }
    };
}

sink_kinds! {
    /// Search documents in Elasticsearch or OpenSearch.
    elasticsearch::ElasticsearchConfig => Elasticsearch,
    /// Change streams on Kafka topics.
    kafka::KafkaSinkConfig => Kafka,
    /// Notifications to SaaS tools.
    notify::NotifyConfig => Notify,
    /// One line per change on standard output.
    console::ConsoleConfig => Console,
    /// NDJSON files, one per tenant and day.
    file::FileConfig => File,
    /// Masking views a downstream PostgreSQL enforces the policies with.
    postgres_masking::PostgresMaskingConfig => PostgresMasking,
}
