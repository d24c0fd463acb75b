//! The mask types of a masking policy, in Apache Ranger's vocabulary, and
//! the order that decides between two masks on one column.

use std::fmt;

/// How a masked column's values are replaced (Ranger's names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mask {
    /// Nothing of the value: NULL.
    Null,
    /// SHA-256 of the value, hex: equal values stay equal (joins, counts).
    Hash,
    /// Letters and digits replaced (upper `X`, lower `x`, digits `n`),
    /// punctuation and length kept (Hive's `mask`).
    Mask,
    /// Dates and timestamps cut to January 1st of their year.
    DateShowYear,
    /// All but the last four characters masked as `x`.
    ShowLast4,
    /// All but the first four characters masked as `x`.
    ShowFirst4,
    /// A SQL expression over the column, written `{col}`.
    Custom(String),
    /// The raw value.
    None,
}

impl Mask {
    /// Parses a policy's `mask` and `expression`.
    pub fn parse(mask: &str, expression: Option<&str>) -> Result<Mask, String> {
        Ok(match mask {
            "MASK_NULL" => Mask::Null,
            "MASK_HASH" => Mask::Hash,
            "MASK" => Mask::Mask,
            "MASK_DATE_SHOW_YEAR" => Mask::DateShowYear,
            "MASK_SHOW_LAST_4" => Mask::ShowLast4,
            "MASK_SHOW_FIRST_4" => Mask::ShowFirst4,
            "MASK_NONE" => Mask::None,
            "CUSTOM" => match expression {
                Some(e) if !e.trim().is_empty() => Mask::Custom(e.to_owned()),
                _ => return Err("a CUSTOM mask needs an expression".into()),
            },
            other => {
                return Err(format!(
                    "unknown mask {other:?} (MASK, MASK_SHOW_LAST_4, MASK_SHOW_FIRST_4, MASK_HASH, MASK_NULL, MASK_DATE_SHOW_YEAR, MASK_NONE or CUSTOM)"
                ));
            }
        })
    }

    /// Ranger's name of the mask type.
    pub fn name(&self) -> &'static str {
        match self {
            Mask::Null => "MASK_NULL",
            Mask::Hash => "MASK_HASH",
            Mask::Mask => "MASK",
            Mask::DateShowYear => "MASK_DATE_SHOW_YEAR",
            Mask::ShowLast4 => "MASK_SHOW_LAST_4",
            Mask::ShowFirst4 => "MASK_SHOW_FIRST_4",
            Mask::Custom(_) => "CUSTOM",
            Mask::None => "MASK_NONE",
        }
    }

    /// How much of the value the mask keeps back: higher is more
    /// restrictive. NULL keeps everything back; a hash gives away only
    /// equality; `MASK` the shape (length, punctuation, kinds of
    /// characters); the year of a date; four characters of the value; a
    /// custom expression, which may give away anything; the raw value last.
    pub fn restrictiveness(&self) -> u8 {
        match self {
            Mask::Null => 7,
            Mask::Hash => 6,
            Mask::Mask => 5,
            Mask::DateShowYear => 4,
            Mask::ShowLast4 => 3,
            Mask::ShowFirst4 => 2,
            Mask::Custom(_) => 1,
            Mask::None => 0,
        }
    }

    /// The mask that applies when `self` and `other` both apply to a
    /// column: the more restrictive one. Two different custom expressions
    /// cannot be ranked, so the column is NULL.
    pub fn strictest(self, other: Mask) -> Mask {
        match (&self, &other) {
            (Mask::Custom(a), Mask::Custom(b)) if a != b => Mask::Null,
            _ if other.restrictiveness() > self.restrictiveness() => other,
            _ => self,
        }
    }
}

impl fmt::Display for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_more_restrictive_mask_wins_whatever_the_order() {
        let all = [
            Mask::None,
            Mask::Custom("left({col}, 1)".into()),
            Mask::ShowFirst4,
            Mask::ShowLast4,
            Mask::DateShowYear,
            Mask::Mask,
            Mask::Hash,
            Mask::Null,
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                let want = if i >= j { a } else { b };
                assert_eq!(&a.clone().strictest(b.clone()), want, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn two_custom_masks_make_null() {
        let a = Mask::Custom("left({col}, 1)".into());
        let b = Mask::Custom("right({col}, 1)".into());
        assert_eq!(a.clone().strictest(b), Mask::Null);
        assert_eq!(a.clone().strictest(a.clone()), a);
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "MASK",
            "MASK_SHOW_LAST_4",
            "MASK_SHOW_FIRST_4",
            "MASK_HASH",
            "MASK_NULL",
            "MASK_DATE_SHOW_YEAR",
            "MASK_NONE",
        ] {
            assert_eq!(Mask::parse(name, None).unwrap().name(), name);
        }
        assert_eq!(
            Mask::parse("CUSTOM", Some("upper({col})")).unwrap(),
            Mask::Custom("upper({col})".into())
        );
        assert!(Mask::parse("CUSTOM", None).is_err());
        assert!(
            Mask::parse("REDACT", None)
                .unwrap_err()
                .contains("unknown mask")
        );
    }
}
