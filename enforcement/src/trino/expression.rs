//! A mask as the Trino SQL expression Trino evaluates in place of a
//! column. The shapes follow Apache Ranger's Trino service definition
//! (`ranger-servicedef-trino.json`: `cast(<transform of {col}> as {type})`);
//! what each mask keeps is Lily's own (Hive's functions, as the SQL endpoint
//! applies them), so a value masked by Trino equals the same value masked
//! by Lily's endpoint: lower-case SHA-256 hex, `X`/`x`/`n`, `x` for hidden
//! characters. Trino's regular expressions take Unicode categories
//! (`\p{Lu}`) as Java does.

use crate::policy::Mask;

/// A column name as a Trino identifier.
fn quote(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

/// Trino's character types: `varchar`, `varchar(n)`, `char(n)`.
fn is_text(t: &str) -> bool {
    t == "varchar" || t.starts_with("varchar(") || t.starts_with("char(") || t == "char"
}

fn is_date(t: &str) -> bool {
    t == "date" || t.starts_with("timestamp")
}

/// A type name as Trino displays it, safe to put in `CAST(... AS <type>)`:
/// letters, digits, spaces, `_`, `(`, `)` and `,` only.
fn safe_type(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _(),".contains(c))
}

/// Letters and digits, as Lily's partial masks hide them.
const HIDDEN: &str = r"[\p{Lu}\p{Ll}\p{N}]";

/// The expression that masks `column` of Trino type `column_type` with
/// `mask`; `None` for `MASK_NONE` (no mask). Types a mask has no form for
/// get `NULL`, as on Lily's SQL endpoint.
pub fn trino_mask(mask: &Mask, column: &str, column_type: &str) -> Option<String> {
    let t = column_type.trim().to_ascii_lowercase();
    let c = quote(column);
    let cast = |e: String| {
        if safe_type(&t) {
            format!("CAST({e} AS {t})")
        } else {
            "NULL".to_owned()
        }
    };
    Some(match mask {
        Mask::None => return None,
        Mask::Null => "NULL".to_owned(),
        Mask::Hash if is_text(&t) => cast(format!("lower(to_hex(sha256(to_utf8({c}))))")),
        Mask::Mask if is_text(&t) => cast(format!(
            r"regexp_replace(regexp_replace(regexp_replace({c}, '\p{{Lu}}', 'X'), '\p{{Ll}}', 'x'), '\p{{N}}', 'n')"
        )),
        Mask::ShowLast4 if is_text(&t) => cast(format!(
            "regexp_replace(substr({c}, 1, greatest(length({c}) - 4, 0)), '{HIDDEN}', 'x') || substr({c}, greatest(length({c}) - 3, 1))"
        )),
        Mask::ShowFirst4 if is_text(&t) => cast(format!(
            "substr({c}, 1, 4) || regexp_replace(substr({c}, 5), '{HIDDEN}', 'x')"
        )),
        Mask::DateShowYear if is_date(&t) => cast(format!("date_trunc('year', {c})")),
        Mask::Custom(e) => cast(format!("({})", e.replace("{col}", &c))),
        _ => "NULL".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_masks_keep_the_type() {
        assert_eq!(
            trino_mask(&Mask::Hash, "email", "varchar(100)").as_deref(),
            Some(r#"CAST(lower(to_hex(sha256(to_utf8("email")))) AS varchar(100))"#)
        );
        assert_eq!(
            trino_mask(&Mask::Mask, "name", "varchar").as_deref(),
            Some(
                r#"CAST(regexp_replace(regexp_replace(regexp_replace("name", '\p{Lu}', 'X'), '\p{Ll}', 'x'), '\p{N}', 'n') AS varchar)"#
            )
        );
        assert!(
            trino_mask(&Mask::ShowLast4, "card", "varchar")
                .unwrap()
                .contains(r"substr(")
        );
    }

    #[test]
    fn types_without_a_masked_form_are_null() {
        assert_eq!(
            trino_mask(&Mask::Hash, "n", "integer").as_deref(),
            Some("NULL")
        );
        assert_eq!(
            trino_mask(&Mask::Null, "n", "varchar").as_deref(),
            Some("NULL")
        );
        assert_eq!(
            trino_mask(&Mask::DateShowYear, "born", "date").as_deref(),
            Some(r#"CAST(date_trunc('year', "born") AS date)"#)
        );
        assert_eq!(
            trino_mask(&Mask::DateShowYear, "x", "varchar").as_deref(),
            Some("NULL")
        );
        assert_eq!(trino_mask(&Mask::None, "x", "varchar"), None);
    }

    #[test]
    fn names_and_types_cannot_break_out() {
        assert_eq!(
            trino_mask(&Mask::Hash, r#"a"b"#, "varchar").as_deref(),
            Some(r#"CAST(lower(to_hex(sha256(to_utf8("a""b")))) AS varchar)"#)
        );
        assert_eq!(
            trino_mask(
                &Mask::Custom("upper({col})".into()),
                "x",
                "varchar); DROP TABLE t; --"
            )
            .as_deref(),
            Some("NULL")
        );
    }
}
