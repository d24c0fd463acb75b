//! Environment overrides: `LILY_<SECTION>__<KEY>=value` sets `<section>.<key>`;
//! a list of strings is given comma-separated (`LILY_PROPAGATION__TAGS=PII,GDPR`).
//!
//! The overrides are applied to the parsed TOML table before it is turned
//! into a [`LilyConfig`]. The TOML type of each value (integer, boolean,
//! float or string) is taken from what the default configuration serializes
//! to at the same path, so that a bad value gets a message naming the
//! variable rather than a generic type error.

use toml::{Table, Value};

use crate::{ConfigError, LilyConfig};

/// Prefix of every variable Lily reads.
pub const ENV_PREFIX: &str = "LILY_";

/// Separator between the section, the key and a map entry's key.
pub const ENV_SEPARATOR: &str = "__";

/// One override that was applied: the dotted key it set and the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub key: String,
    pub var: String,
}

/// A variable that is a configuration override, resolved against the
/// defaults: where it goes and the typed value.
struct Override {
    /// `[section, key]` or `[section, key, map_key]`.
    path: Vec<String>,
    value: Value,
}

/// Applies every `LILY_<SECTION>__<KEY>` variable of `env` to `table`.
///
/// Variables are applied in name order, so the first error reported does not
/// depend on the order of the environment; if a name appears more than once
/// the last occurrence wins. Variables starting with `LILY_` but without
/// `__` belong to other tools and are ignored.
pub(crate) fn apply(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Applied>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(var, _)| is_override(var))
        .collect();
    if vars.is_empty() {
        return Ok(Vec::new());
    }
    // Stable: duplicates keep their relative order, so the last one wins.
    vars.sort_by(|a, b| a.0.cmp(&b.0));

    let defaults = defaults_table();
    let mut applied = Vec::with_capacity(vars.len());
    for (var, raw) in vars {
        let over = resolve(&defaults, &var, &raw)?;
        check(&over, &var, &raw)?;
        applied.push(Applied {
            key: over.path.join("."),
            var,
        });
        insert(table, over);
    }
    Ok(applied)
}

/// Whether `var` is a configuration override (as opposed to another tool's
/// `LILY_*` variable).
fn is_override(var: &str) -> bool {
    var.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// The default configuration as a TOML table: the template that gives each
/// key's type.
fn defaults_table() -> Table {
    Table::try_from(LilyConfig::default()).expect("the default configuration serializes to TOML")
}

/// Finds where `var` points in the defaults and converts `raw` to the type
/// found there.
fn resolve(defaults: &Table, var: &str, raw: &str) -> Result<Override, ConfigError> {
    let rest = &var[ENV_PREFIX.len()..];
    let path: Vec<String> = rest
        .splitn(3, ENV_SEPARATOR)
        .map(|part| part.to_ascii_lowercase())
        .collect();
    let dotted = path.join(".");
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let no_such = || env_err(format!("no such setting {dotted}"));

    // `[sinks.<name>]` tables have no defaults here: their values stay text
    // until the sink registry types them by the sink's kind.
    if path[0] == "sinks" {
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(|part| part.to_ascii_lowercase())
            .collect();
        if path.len() < 3 || path.iter().any(String::is_empty) {
            return Err(env_err(format!(
                "set one setting of a sink as {ENV_PREFIX}SINKS{ENV_SEPARATOR}<NAME>{ENV_SEPARATOR}<KEY>=<value>"
            )));
        }
        return Ok(Override {
            path,
            value: Value::String(raw.to_owned()),
        });
    }

    let section = defaults
        .get(&path[0])
        .and_then(Value::as_table)
        .ok_or_else(no_such)?;
    let template = section.get(&path[1]).ok_or_else(no_such)?;

    let template = match (template, path.get(2)) {
        (Value::Table(_), None) => {
            return Err(env_err(format!(
                "{dotted} is a table of settings and cannot be set as a whole; \
                 set one entry with {var}{ENV_SEPARATOR}<NAME>=<value>"
            )));
        }
        (Value::Table(_), Some(entry)) if entry.is_empty() => {
            return Err(env_err(format!(
                "the entry name after {var} is empty; \
                 name the entry of {}.{} to set, as in {ENV_PREFIX}{}{ENV_SEPARATOR}{}{ENV_SEPARATOR}<NAME>=<value>",
                path[0],
                path[1],
                path[0].to_ascii_uppercase(),
                path[1].to_ascii_uppercase(),
            )));
        }
        // A map entry: typed like an existing default entry, else a string.
        (Value::Table(map), Some(entry)) => map.get(entry),
        (_, Some(_)) => return Err(no_such()),
        (template, None) => Some(template),
    };

    let value = coerce(template, raw, &dotted).map_err(env_err)?;
    Ok(Override { path, value })
}

/// `raw`, a variable's text, as the type of `template` (the default or
/// file value at the same key, `dotted`): an integer, a boolean, a number,
/// a comma-separated list of strings, or else the text itself. The sink
/// registry types `LILY_SINKS__<NAME>__<KEY>` values with it, against the
/// defaults of the sink's kind.
pub fn coerce(template: Option<&Value>, raw: &str, dotted: &str) -> Result<Value, String> {
    Ok(match template {
        None | Some(Value::String(_)) => Value::String(raw.to_owned()),
        Some(Value::Integer(_)) => {
            let n: i64 = raw
                .trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a valid integer for {dotted}"))?;
            // Every integer setting is a count, a size or a duration.
            if n < 0 {
                return Err(format!(
                    "{raw:?} is not a valid integer for {dotted}: it must be zero or more"
                ));
            }
            Value::Integer(n)
        }
        Some(Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => {
                return Err(format!(
                    "{raw:?} is not a valid boolean for {dotted}: use true or false"
                ));
            }
        },
        Some(Value::Float(_)) => {
            let x: f64 = raw
                .trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not a valid number for {dotted}"))?;
            Value::Float(x)
        }
        // A list of strings is given comma-separated: "a,b".
        Some(Value::Array(items)) if items.iter().all(Value::is_str) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Some(Value::Array(_) | Value::Datetime(_) | Value::Table(_)) => {
            return Err(format!(
                "{dotted} cannot be set from the environment; set it in the configuration file"
            ));
        }
    })
}

/// Deserializes a configuration holding only this override, so that a value
/// the type accepts but the setting does not (an unknown log format, say) is
/// reported against the variable.
fn check(over: &Override, var: &str, raw: &str) -> Result<(), ConfigError> {
    let mut table = Table::new();
    insert(
        &mut table,
        Override {
            path: over.path.clone(),
            value: over.value.clone(),
        },
    );
    match table.try_into::<LilyConfig>() {
        Ok(_) => Ok(()),
        Err(err) => Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!(
                "{raw:?} is not a valid value for {}: {}",
                over.path.join("."),
                err.message().trim_end()
            ),
        }),
    }
}

/// Sets `over.path` in `table`, creating the tables on the way.
fn insert(table: &mut Table, over: Override) {
    let Some((last, parents)) = over.path.split_last() else {
        return;
    };
    let mut table = table;
    for key in parents {
        let slot = table
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !slot.is_table() {
            *slot = Value::Table(Table::new());
        }
        table = slot.as_table_mut().expect("just made a table");
    }
    table.insert(last.clone(), over.value);
}
