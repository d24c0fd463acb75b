//! Tenant ids, checked once, and how they appear in names other systems
//! share between tenants (Kafka topics, search indices, files).

use std::fmt;

/// A tenant id: 1-63 characters of `a-z`, `0-9`, `_` and `-`, starting with
/// a letter or a digit (the metastore's own rule on `metastore.tenants`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

/// A text that cannot be a tenant id.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{0:?} is not a tenant id (1-63 characters of a-z, 0-9, _ and -, starting with a letter or a digit)"
)]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// Checks `id` against the metastore's rule.
    pub fn parse(id: &str) -> Result<TenantId, InvalidTenantId> {
        let ok = !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && id
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(TenantId(id.to_owned()))
        } else {
            Err(InvalidTenantId(id.to_owned()))
        }
    }

    /// The id as it is.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as one segment of a shared name (a Kafka topic, an index, a
    /// file): only `a-z` and `0-9`, with `0` as the escape character
    /// (`0` is `00`, `-` is `0d`, `_` is `0u`). Ids without those three
    /// characters are unchanged (`acme` stays `acme`).
    ///
    /// Two tenants never share a segment, and since a segment holds no `.`,
    /// `_` or `-`, a name built as `<prefix>.<segment>.<stream>` or
    /// `<prefix>-<segment>-<index>` neither collides under Kafka's rule
    /// (`.` and `_` are the same in metric names) nor matches another
    /// tenant's pattern: `acme-eu` is `acme0deu`, which no pattern
    /// `<prefix>-acme-*` matches, and `acme_incident` is `acme0uincident`,
    /// so `lily.acme.incident_assets` and `lily.acme0uincident.assets`
    /// stay apart.
    pub fn segment(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for c in self.0.chars() {
            match c {
                '0' => out.push_str("00"),
                '-' => out.push_str("0d"),
                '_' => out.push_str("0u"),
                c => out.push(c),
            }
        }
        out
    }

    /// The tenant whose [`segment`](TenantId::segment) is `segment`, if any.
    pub fn from_segment(segment: &str) -> Option<TenantId> {
        let mut out = String::with_capacity(segment.len());
        let mut chars = segment.chars();
        while let Some(c) = chars.next() {
            match c {
                '0' => match chars.next()? {
                    '0' => out.push('0'),
                    'd' => out.push('-'),
                    'u' => out.push('_'),
                    _ => return None,
                },
                c if c.is_ascii_lowercase() || c.is_ascii_digit() => out.push(c),
                _ => return None,
            }
        }
        TenantId::parse(&out).ok()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant id is text in SQL (`tenant_id text` everywhere).
impl tokio_postgres::types::ToSql for TenantId {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <String as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

impl std::ops::Deref for TenantId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Pairs `(renamed, other)` of `ids` where `renamed`'s segment is `other`'s
/// id as it is: before segments, Kafka topics and search indices were
/// named with ids as they are, so after an upgrade `renamed` writes to the
/// names `other` used to have (tenant `team0` to `lily.team00.*`, once
/// tenant `team00`'s). Consumers and grants on those old names must move.
pub fn renamed_onto_others(ids: &[TenantId]) -> Vec<(TenantId, TenantId)> {
    let known: std::collections::HashSet<&str> = ids.iter().map(TenantId::as_str).collect();
    ids.iter()
        .filter_map(|t| {
            let seg = t.segment();
            (seg != t.0 && known.contains(seg.as_str())).then(|| (t.clone(), TenantId(seg)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[test]
    fn the_metastore_rule() {
        for ok in [
            "acme",
            "a",
            "0",
            "acme-eu",
            "acme_incident",
            &"a".repeat(63),
        ] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "_acme",
            "Acme",
            "acme.eu",
            "acme eu",
            &"a".repeat(64),
        ] {
            let e = TenantId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a tenant id"), "{bad}");
        }
    }

    #[test]
    fn segments_are_plain_for_plain_ids_and_round_trip() {
        assert_eq!(t("acme").segment(), "acme");
        assert_eq!(t("acme-eu").segment(), "acme0deu");
        assert_eq!(t("acme_incident").segment(), "acme0uincident");
        assert_eq!(t("team01").segment(), "team001");
        for id in ["acme", "acme-eu", "a_b-c0", "00", "0d", "x0u-"] {
            assert_eq!(TenantId::from_segment(&t(id).segment()), Some(t(id)));
        }
        assert_eq!(TenantId::from_segment("acme-eu"), None);
        assert_eq!(TenantId::from_segment("acme0x"), None);
        assert_eq!(TenantId::from_segment("acme0"), None);
    }

    #[test]
    fn tenants_that_take_anothers_old_names_are_found() {
        let ids: Vec<TenantId> = ["team0", "team00", "acme", "acme-eu", "acme0deu"]
            .into_iter()
            .map(t)
            .collect();
        let pairs = renamed_onto_others(&ids);
        assert_eq!(
            pairs,
            vec![(t("team0"), t("team00")), (t("acme-eu"), t("acme0deu"))]
        );
    }

    #[test]
    fn segments_never_collide_under_kafkas_rule_nor_prefix_each_other() {
        // Every id over a small alphabet, up to three characters.
        let alphabet = ['a', '0', '-', '_'];
        let mut ids = Vec::new();
        for len in 1..=3 {
            let mut idx = vec![0; len];
            loop {
                let s: String = idx.iter().map(|&i| alphabet[i]).collect();
                if let Ok(id) = TenantId::parse(&s) {
                    ids.push(id);
                }
                let mut k = 0;
                while k < len {
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
        let streams = ["assets", "incident_assets", "incidents"];
        let mut topics = std::collections::HashMap::new();
        for id in &ids {
            let seg = id.segment();
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
            for stream in streams {
                let normalised = format!("lily.{seg}.{stream}").replace('.', "_");
                if let Some(other) = topics.insert(normalised.clone(), id.clone()) {
                    panic!("{id} and {other} collide on {normalised}");
                }
            }
            for other in &ids {
                if other != id {
                    let alias = format!("lily-{}-assets", other.segment());
                    assert!(
                        !alias.starts_with(&format!("lily-{seg}-")),
                        "{id}'s pattern matches {other}'s alias {alias}"
                    );
                }
            }
        }
        assert!(ids.len() > 20);
    }
}
