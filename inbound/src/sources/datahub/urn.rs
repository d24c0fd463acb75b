//! DataHub URNs (`urn:li:<entity type>:<key>`), as `datahub.emitter.
//! mce_builder` makes them, read into the catalog's qualified names. A
//! compound key is a parenthesised tuple that may nest another URN
//! (`urn:li:schemaField:(urn:li:dataset:(…),email)`); the characters
//! `,()` and U+241F inside an id are percent-encoded by the client's
//! `UrnEncoder`, and decoded here.

/// An entity URN, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urn {
    /// `urn:li:dataset:(urn:li:dataPlatform:<platform>,<name>,<env>)`.
    Dataset {
        /// The platform (`postgres`, `snowflake`, …).
        platform: String,
        /// The dataset's name on its platform: the catalog's qualified name.
        name: String,
        /// The environment (`PROD`, …).
        env: String,
    },
    /// `urn:li:schemaField:(<dataset URN>,<field path>)`.
    SchemaField {
        /// The dataset's name.
        dataset: String,
        /// The field path, simplified (see [`simple_field_path`]).
        field: String,
    },
    /// `urn:li:container:<guid>`: named only by its `containerProperties`.
    Container(String),
    /// `urn:li:chart:(<platform>,<id>)`.
    Chart {
        /// The BI tool.
        platform: String,
        /// Its id there.
        id: String,
    },
    /// `urn:li:dashboard:(<platform>,<id>)`.
    Dashboard {
        /// The BI tool.
        platform: String,
        /// Its id there.
        id: String,
    },
    /// `urn:li:dataFlow:(<orchestrator>,<flow id>,<cluster>)`.
    DataFlow {
        /// The orchestrator (`airflow`, …).
        orchestrator: String,
        /// The flow (a DAG).
        flow: String,
    },
    /// `urn:li:dataJob:(<dataFlow URN>,<job id>)`.
    DataJob {
        /// The orchestrator of its flow.
        orchestrator: String,
        /// Its flow.
        flow: String,
        /// The job (a task).
        job: String,
    },
    /// Any other entity (`corpuser`, `query`, `dataHubExecutionRequest`, …).
    Other(String),
}

impl Urn {
    /// Reads `urn`; `None` when it is not a URN of the form above.
    pub fn parse(urn: &str) -> Option<Urn> {
        let rest = urn.strip_prefix("urn:li:")?;
        let (kind, key) = rest.split_once(':')?;
        Some(match kind {
            "dataset" => {
                let [platform, name, env] = tuple::<3>(key)?;
                Urn::Dataset {
                    platform: platform
                        .strip_prefix("urn:li:dataPlatform:")
                        .unwrap_or(platform)
                        .to_owned(),
                    name: decode(name),
                    env: env.to_owned(),
                }
            }
            "schemaField" => {
                let [dataset, field] = tuple::<2>(key)?;
                let Urn::Dataset { name, .. } = Urn::parse(dataset)? else {
                    return None;
                };
                Urn::SchemaField {
                    dataset: name,
                    field: simple_field_path(&decode(field)),
                }
            }
            "container" => Urn::Container(key.to_owned()),
            "chart" | "dashboard" => {
                let [platform, id] = tuple::<2>(key)?;
                let (platform, id) = (decode(platform), decode(id));
                if kind == "chart" {
                    Urn::Chart { platform, id }
                } else {
                    Urn::Dashboard { platform, id }
                }
            }
            "dataFlow" => {
                let [orchestrator, flow, _cluster] = tuple::<3>(key)?;
                Urn::DataFlow {
                    orchestrator: decode(orchestrator),
                    flow: decode(flow),
                }
            }
            "dataJob" => {
                let [flow, job] = tuple::<2>(key)?;
                let Urn::DataFlow { orchestrator, flow } = Urn::parse(flow)? else {
                    return None;
                };
                Urn::DataJob {
                    orchestrator,
                    flow,
                    job: decode(job),
                }
            }
            _ => Urn::Other(kind.to_owned()),
        })
    }
}

/// The id of a simple URN of `kind` (`urn:li:tag:PII` is `PII` for
/// `tag`), decoded; `None` for another kind.
pub fn id_of(urn: &str, kind: &str) -> Option<String> {
    let rest = urn.strip_prefix("urn:li:")?;
    let (k, id) = rest.split_once(':')?;
    (k == kind && !id.is_empty()).then(|| decode(id))
}

/// Splits `(a,b,c)` into exactly `N` members at the commas of its top level.
fn tuple<const N: usize>(key: &str) -> Option<[&str; N]> {
    let inner = key.strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = Vec::with_capacity(N);
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    parts.push(&inner[start..]);
    parts.try_into().ok()
}

/// Undoes `UrnEncoder`: `%2C`, `%28`, `%29` and `%E2%90%9F` (U+241F).
fn decode(id: &str) -> String {
    if !id.contains('%') {
        return id.to_owned();
    }
    id.replace("%2C", ",")
        .replace("%28", "(")
        .replace("%29", ")")
        .replace("%E2%90%9F", "\u{241f}")
}

/// A v2 field path (`[version=2.0].[type=Order].[type=Cust].customer.
/// [type=string].name`) as its simple dotted path (`customer.name`), the
/// way DataHub's own `get_simple_field_path_from_v2_field_path` reads it;
/// a v1 path (a column name, `address.city`) is already simple.
pub fn simple_field_path(path: &str) -> String {
    if !path.starts_with("[version=2.0]") {
        return path.to_owned();
    }
    // A bracketed step may hold a dot itself (`[version=2.0]`).
    let mut parts = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let step = if rest.starts_with('[') {
            rest.find(']').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find('.').unwrap_or(rest.len())
        };
        if !rest.starts_with('[') {
            parts.push(&rest[..step]);
        }
        rest = rest[step..].strip_prefix('.').unwrap_or(&rest[step..]);
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns_read_as_the_client_writes_them() {
        assert_eq!(
            Urn::parse("urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.orders,PROD)"),
            Some(Urn::Dataset {
                platform: "postgres".into(),
                name: "shop.sales.orders".into(),
                env: "PROD".into()
            })
        );
        assert_eq!(
            Urn::parse(
                "urn:li:schemaField:(urn:li:dataset:(urn:li:dataPlatform:postgres,shop.sales.orders,PROD),weird%2Ccol%28x%29)"
            ),
            Some(Urn::SchemaField {
                dataset: "shop.sales.orders".into(),
                field: "weird,col(x)".into()
            })
        );
        assert_eq!(
            Urn::parse("urn:li:dataJob:(urn:li:dataFlow:(airflow,daily,prod),load_orders)"),
            Some(Urn::DataJob {
                orchestrator: "airflow".into(),
                flow: "daily".into(),
                job: "load_orders".into()
            })
        );
        assert_eq!(
            Urn::parse("urn:li:container:ea3682d9b15a15aab92e076074c2394c"),
            Some(Urn::Container("ea3682d9b15a15aab92e076074c2394c".into()))
        );
        assert_eq!(
            Urn::parse("urn:li:corpuser:jdoe"),
            Some(Urn::Other("corpuser".into()))
        );
        assert_eq!(Urn::parse("urn:li:dataset:(only,two)"), None);
        assert_eq!(Urn::parse("not a urn"), None);
        assert_eq!(id_of("urn:li:tag:PII", "tag").as_deref(), Some("PII"));
        assert_eq!(id_of("urn:li:tag:PII", "glossaryTerm"), None);
    }

    #[test]
    fn v2_field_paths_become_dotted_paths() {
        assert_eq!(
            simple_field_path("[version=2.0].[type=Order].[type=Cust].customer.[type=string].name"),
            "customer.name"
        );
        assert_eq!(simple_field_path("address.city"), "address.city");
    }
}
