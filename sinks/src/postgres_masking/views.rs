//! The masking view of one governed table, as PostgreSQL SQL: each tagged
//! column is `CASE WHEN pg_has_role('<role>', 'MEMBER') THEN col ELSE
//! <mask> END`, every other column as it is. What each mask keeps is
//! Lily's (Hive's functions, as the SQL endpoint and Trino apply them):
//! lower-case SHA-256 hex, letters and digits as `X`/`x`/`n`, hidden
//! characters as `x`, January 1st of a date's year; a type a mask has no
//! form for gets NULL. Every mask is cast back to the column's type, so
//! the view keeps the table's shape (and `CREATE OR REPLACE VIEW` works).

use std::collections::BTreeSet;

use lily_enforcement::policy::{Mask, TenantPolicies};
use sha2::{Digest, Sha256};

/// A column of the base table, as `pg_attribute` and `format_type` give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseColumn {
    /// Its name.
    pub name: String,
    /// Its type, as `format_type` writes it (`character varying(100)`).
    pub data_type: String,
}

/// An identifier, quoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Character types (arrays of them are not: no mask has a form for them).
fn is_text(t: &str) -> bool {
    !t.ends_with("[]")
        && (t == "text"
            || t.starts_with("character varying")
            || t.starts_with("character(")
            || t == "character"
            || t == "name"
            || t == "citext")
}

fn is_date(t: &str) -> bool {
    !t.ends_with("[]") && (t == "date" || t.starts_with("timestamp"))
}

/// Every character but spaces and punctuation. PostgreSQL's classes follow
/// the database's ctype: under the C locale no character outside ASCII is
/// in `[:punct:]` or `[:space:]`, so those are hidden too (never shown).
const HIDDEN: &str = "[^[:space:][:punct:]]";

/// The expression that masks column `c` (quoted) of type `t` with `mask`.
pub fn pg_mask(mask: &Mask, c: &str, t: &str) -> String {
    let e = match mask {
        Mask::None => return c.to_owned(),
        Mask::Hash if is_text(t) => {
            format!("encode(sha256(convert_to({c}::text, 'UTF8')), 'hex')")
        }
        // Upper `X`, lower `x`, digits `n`; then whatever the database's
        // ctype did not class (any non-ASCII character under the C locale,
        // uncased letters under any) is `x` too, not shown.
        Mask::Mask if is_text(t) => format!(
            "regexp_replace(regexp_replace(regexp_replace(regexp_replace({c}::text, '[[:upper:]]', 'X', 'g'), '[[:lower:]]', 'x', 'g'), '[[:digit:]]', 'n', 'g'), '[^\\u0001-\\u007f]', 'x', 'g')"
        ),
        Mask::ShowLast4 if is_text(t) => format!(
            "regexp_replace(left({c}::text, -4), '{HIDDEN}', 'x', 'g') || right({c}::text, 4)"
        ),
        Mask::ShowFirst4 if is_text(t) => format!(
            "left({c}::text, 4) || regexp_replace(substr({c}::text, 5), '{HIDDEN}', 'x', 'g')"
        ),
        Mask::DateShowYear if is_date(t) => format!("date_trunc('year', {c})"),
        // A custom expression is a steward's SQL: in a view it would run
        // with the view owner's privileges (it could read any table the
        // connection can). Downstream it is NULL, the strictest mask.
        _ => "NULL".to_owned(),
    };
    format!("({e})::{t}")
}

/// Whether a session holds one of `roles` (those that exist downstream).
fn holds_any(roles: &[String], existing: &BTreeSet<String>) -> String {
    let held: Vec<String> = roles
        .iter()
        .filter(|r| existing.contains(*r))
        .map(|r| format!("pg_has_role({}, 'MEMBER')", literal(r)))
        .collect();
    if held.is_empty() {
        "false".to_owned()
    } else {
        held.join(" OR ")
    }
}

/// The select-list entry of `column`: the raw column, or a `CASE` giving
/// each reader the strictest mask among the policies it is not exempt from
/// (the SQL endpoint's rule): the policies are tried strictest first, so
/// the first one the reader does not escape decides.
fn select_item(
    policies: &TenantPolicies,
    table: &str,
    column: &BaseColumn,
    existing_roles: &BTreeSet<String>,
) -> String {
    let c = ident(&column.name);
    let Some(tags) = policies.column_tags(table, &column.name) else {
        return c;
    };
    let mut applying: Vec<_> = policies
        .policies
        .iter()
        .filter(|p| p.tags.iter().any(|t| tags.tags.contains_key(t)))
        .filter(|p| p.mask != Mask::None)
        .collect();
    if applying.is_empty() {
        return c;
    }
    // Strictest first: the mask two policies give together is the
    // stricter one, whichever order they are listed in.
    applying.sort_by_key(|p| std::cmp::Reverse(p.mask.restrictiveness()));
    let mut whens = Vec::new();
    // Two different custom masks on one reader cannot be ranked: NULL.
    let customs: Vec<_> = applying
        .iter()
        .filter(|p| matches!(p.mask, Mask::Custom(_)))
        .collect();
    for (i, a) in customs.iter().enumerate() {
        for b in &customs[i + 1..] {
            if a.mask != b.mask {
                whens.push(format!(
                    "WHEN NOT ({}) AND NOT ({}) THEN NULL::{}",
                    holds_any(&a.unmasked_roles, existing_roles),
                    holds_any(&b.unmasked_roles, existing_roles),
                    column.data_type
                ));
            }
        }
    }
    for p in &applying {
        whens.push(format!(
            "WHEN NOT ({}) THEN {}",
            holds_any(&p.unmasked_roles, existing_roles),
            pg_mask(&p.mask, &c, &column.data_type)
        ));
    }
    format!("CASE {} ELSE {c} END AS {c}", whens.join(" "))
}

/// The masking view of base table `base` (`schema.table`) whose catalog
/// table is `table`, and the digest of its definition.
pub fn view_query(
    policies: &TenantPolicies,
    table: &str,
    base: &str,
    columns: &[BaseColumn],
    existing_roles: &BTreeSet<String>,
) -> (String, String) {
    let items: Vec<String> = columns
        .iter()
        .map(|c| select_item(policies, table, c, existing_roles))
        .collect();
    let from = match base.split_once('.') {
        Some((schema, name)) => format!("{}.{}", ident(schema), ident(name)),
        None => ident(base),
    };
    let query = format!("SELECT {} FROM {from}", items.join(", "));
    let digest = Sha256::digest(query.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    (query, hex)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lily_enforcement::policy::{ColumnTags, MaskingPolicy, TagOrigin};

    use super::*;

    fn policies(mask: Mask, unmasked: &[&str]) -> TenantPolicies {
        let mut t = TenantPolicies {
            policies: vec![MaskingPolicy {
                name: "pii".into(),
                tags: vec!["PII".into()],
                mask,
                unmasked_roles: unmasked.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        };
        let mut tags = BTreeMap::new();
        tags.insert("PII".to_string(), TagOrigin::default());
        t.columns.entry("db.s.customers".into()).or_default().insert(
            "email".into(),
            ColumnTags {
                qualified_name: "db.s.customers.email".into(),
                table: "db.s.customers".into(),
                name: "email".into(),
                tags,
            },
        );
        t
    }

    fn columns() -> Vec<BaseColumn> {
        vec![
            BaseColumn {
                name: "id".into(),
                data_type: "integer".into(),
            },
            BaseColumn {
                name: "email".into(),
                data_type: "text".into(),
            },
        ]
    }

    #[test]
    fn a_tagged_column_is_masked_unless_the_reader_holds_an_exempt_role() {
        let existing: BTreeSet<String> = ["pii_reader".to_string()].into();
        let (q, _) = view_query(
            &policies(Mask::Hash, &["pii_reader", "absent"]),
            "db.s.customers",
            "public.customers",
            &columns(),
            &existing,
        );
        assert_eq!(
            q,
            "SELECT \"id\", CASE WHEN NOT (pg_has_role('pii_reader', 'MEMBER')) THEN \
             (encode(sha256(convert_to(\"email\"::text, 'UTF8')), 'hex'))::text ELSE \"email\" END AS \"email\" \
             FROM \"public\".\"customers\""
        );
    }

    #[test]
    fn the_definition_changes_with_the_policy_only() {
        let none = BTreeSet::new();
        let a = view_query(&policies(Mask::Hash, &[]), "db.s.customers", "customers", &columns(), &none);
        let b = view_query(&policies(Mask::Hash, &[]), "DB.S.CUSTOMERS", "customers", &columns(), &none);
        let c = view_query(&policies(Mask::Null, &[]), "db.s.customers", "customers", &columns(), &none);
        assert_eq!(a, b);
        assert_ne!(a.1, c.1);
        assert!(a.0.contains("WHEN NOT (false)"), "{}", a.0);
    }

    #[test]
    fn masks_keep_the_type() {
        assert_eq!(pg_mask(&Mask::Null, "\"n\"", "integer"), "(NULL)::integer");
        assert_eq!(
            pg_mask(&Mask::DateShowYear, "\"d\"", "date"),
            "(date_trunc('year', \"d\"))::date"
        );
        assert_eq!(pg_mask(&Mask::Hash, "\"n\"", "bigint"), "(NULL)::bigint");
        assert_eq!(
            pg_mask(&Mask::ShowLast4, "\"c\"", "character varying(19)"),
            "(regexp_replace(left(\"c\"::text, -4), '[^[:space:][:punct:]]', 'x', 'g') || right(\"c\"::text, 4))::character varying(19)"
        );
        assert_eq!(pg_mask(&Mask::Hash, "\"c\"", "text[]"), "(NULL)::text[]");
        assert_eq!(
            pg_mask(&Mask::Custom("(SELECT secret FROM t)".into()), "\"c\"", "text"),
            "(NULL)::text"
        );
    }
}
