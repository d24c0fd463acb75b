//! The bytes Monte Carlo's documented verification signs: Python's
//! `urllib.parse.urlencode(json.loads(body))`. Each top-level key and
//! `str()` of its value are `quote_plus`-encoded and joined as `k=v&...`;
//! `str()` of a dict or list is Python's repr of it (`{'a': None, 'b':
//! True}`), keys in the order the body has them.
//!
//! Exact for everything JSON can carry except the rarest Unicode: a
//! character is escaped the way Python's repr escapes it when it is a
//! control, format or separator character; code points Python considers
//! unprintable for other reasons (unassigned ones) are kept as they are.

use std::fmt::Write as _;

use std::cell::Cell;
use std::collections::HashMap;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that remembers the order of object keys, as Python's
/// `json.loads` does.
enum Py {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    Dict(Vec<(String, Py)>),
}

/// The most values (of any depth) a body may hold before it is signed:
/// the check runs before any credential is known, so its work is bounded.
/// A Monte Carlo event holds a few hundred.
pub const MAX_VALUES: usize = 100_000;

/// Reads a [`Py`], counting every value against a budget.
struct PySeed<'a> {
    budget: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for PySeed<'_> {
    type Value = Py;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Py, D::Error> {
        let left = self.budget.get();
        if left == 0 {
            return Err(serde::de::Error::custom(format!(
                "more than {MAX_VALUES} values"
            )));
        }
        self.budget.set(left - 1);
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PySeed<'_> {
    type Value = Py;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Py, E> {
        Ok(Py::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Py, E> {
        Ok(Py::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Py, E> {
        Ok(Py::Int(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Py, E> {
        Ok(Py::Int(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Py, E> {
        Ok(Py::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Py, E> {
        Ok(Py::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Py, E> {
        Ok(Py::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Py, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(PySeed {
            budget: self.budget,
        })? {
            items.push(item);
        }
        Ok(Py::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Py, A::Error> {
        let mut entries: Vec<(String, Py)> = Vec::new();
        // Where each key sits, so a repeated key costs O(1), not a scan.
        let mut index: HashMap<String, usize> = HashMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(PySeed {
                budget: self.budget,
            })?;
            // A repeated key keeps its first place and its last value.
            match index.get(&k) {
                Some(&i) => entries[i].1 = v,
                None => {
                    index.insert(k.clone(), entries.len());
                    entries.push((k, v));
                }
            }
        }
        Ok(Py::Dict(entries))
    }
}

/// `urlencode(json.loads(body))`, or None when the body is not a JSON
/// object (or holds more than [`MAX_VALUES`] values). Linear in the body.
pub fn python_form(body: &[u8]) -> Option<String> {
    let budget = Cell::new(MAX_VALUES);
    let mut de = serde_json::Deserializer::from_slice(body);
    let Ok(Py::Dict(entries)) = PySeed { budget: &budget }.deserialize(&mut de) else {
        return None;
    };
    de.end().ok()?;
    let mut out = String::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        quote_plus(k, &mut out);
        out.push('=');
        let mut text = String::new();
        str_of(v, &mut text);
        quote_plus(&text, &mut out);
    }
    Some(out)
}

/// Python's `str()`: a top-level string is itself, everything else its repr.
fn str_of(v: &Py, out: &mut String) {
    match v {
        Py::Str(s) => out.push_str(s),
        other => repr(other, out),
    }
}

fn repr(v: &Py, out: &mut String) {
    match v {
        Py::Null => out.push_str("None"),
        Py::Bool(true) => out.push_str("True"),
        Py::Bool(false) => out.push_str("False"),
        Py::Int(i) => out.push_str(i),
        Py::Float(f) => float_repr(*f, out),
        Py::Str(s) => str_repr(s, out),
        Py::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(item, out);
            }
            out.push(']');
        }
        Py::Dict(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                str_repr(k, out);
                out.push_str(": ");
                repr(v, out);
            }
            out.push('}');
        }
    }
}

/// `repr(float)`: the shortest round-trip digits, positional for
/// exponents -4..16, otherwise `d.ddde+XX`.
fn float_repr(f: f64, out: &mut String) {
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        out.push_str(&plain);
        if !plain.contains('.') {
            out.push_str(".0");
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{sign}{:02}", exp.abs());
    }
}

/// `repr(str)`: single quotes unless the text has a single quote and no
/// double one; backslash escapes for the quote, backslash, \t \n \r, and
/// \x/\u/\U for characters Python does not print.
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if printable(c) => out.push(c),
            c => {
                let n = c as u32;
                let _ = if n < 0x100 {
                    write!(out, "\\x{n:02x}")
                } else if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character: false for controls (Cc),
/// format characters (Cf), surrogates and private use, and separators
/// (Zs, Zl, Zp) other than the ASCII space.
fn printable(c: char) -> bool {
    let n = c as u32;
    if c == ' ' {
        return true;
    }
    if n < 0x20 || (0x7f..=0xa0).contains(&n) {
        return false;
    }
    !matches!(n,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
        | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f
        | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd
        | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xf0000..=0x10ffff)
}

/// `quote_plus(text, safe='')`: letters, digits and `_.-~` stay, a space
/// becomes `+`, every other UTF-8 byte `%XX`.
fn quote_plus(text: &str, out: &mut String) {
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_urlencode() {
        // Expected strings were produced by CPython 3.11:
        // urllib.parse.urlencode(json.loads(body))
        let body = br#"{"type": "new incident", "n": 3, "ok": true, "none": null,
            "payload": {"b": [1, 2.5, "x'y"], "a": {"q": "it's \"so\""}, "f": 1e16, "g": 0.0001, "h": 1.0}}"#;
        assert_eq!(
            python_form(body).unwrap(),
            "type=new+incident&n=3&ok=True&none=None&payload=%7B%27b%27%3A+%5B1%2C+2.5%2C+%22x%27y%22%5D%2C+%27a%27%3A+%7B%27q%27%3A+%27it%5C%27s+%22so%22%27%7D%2C+%27f%27%3A+1e%2B16%2C+%27g%27%3A+0.0001%2C+%27h%27%3A+1.0%7D"
        );
        assert_eq!(python_form(b"[1]"), None);
        let mut s = String::new();
        float_repr(1.5e-5, &mut s);
        assert_eq!(s, "1.5e-05");
        let mut s = String::new();
        str_repr("tab\there\u{7f}é\u{200b}", &mut s);
        assert_eq!(s, "'tab\\there\\x7fé\\u200b'");
    }

    /// A body of `n` distinct keys, `{"k0":1,"k1":1,...}`.
    fn many_keys(n: usize) -> String {
        let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":1")).collect();
        format!("{{{}}}", keys.join(","))
    }

    #[test]
    fn repeated_keys_keep_their_first_place_and_last_value() {
        assert_eq!(
            python_form(br#"{"a": 1, "b": 2, "a": 3}"#).unwrap(),
            "a=3&b=2"
        );
    }

    #[test]
    fn a_body_of_many_keys_is_refused_without_quadratic_work() {
        // Under the budget: encoded, in one linear pass.
        let body = many_keys(MAX_VALUES - 1);
        assert!(python_form(body.as_bytes()).is_some());
        // Over it: refused (the signature cannot match, the caller gets 401).
        let body = many_keys(MAX_VALUES + 1);
        assert!(python_form(body.as_bytes()).is_none());
    }
}
