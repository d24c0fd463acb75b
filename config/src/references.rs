//! References in setting values, so secrets stay out of the file:
//! `${NAME}` is the environment variable `NAME`, `${file:PATH}` the
//! contents of the file `PATH` with its trailing newline removed (how
//! Kubernetes secret volumes, Docker secrets, the Vault agent and the
//! cloud secret managers' CSI drivers hand secrets over). `$${` is a
//! literal `${`.

/// Looks an environment variable up by name.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replaces the references in `text`; the error says which one failed and
/// why, never what a secret holds.
pub fn expand_str(text: &str, env: Env<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(format!("{text:?} opens ${{ without closing it"));
        };
        let reference = &body[..end];
        let value = match reference.strip_prefix("file:") {
            Some(path) => {
                let contents = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the secret file {path}: {e}"))?;
                contents
                    .strip_suffix("\r\n")
                    .or_else(|| contents.strip_suffix('\n'))
                    .unwrap_or(&contents)
                    .to_owned()
            }
            None => env(reference)
                .ok_or_else(|| format!("environment variable {reference} is not set"))?,
        };
        out.push_str(&value);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces the references in every string of `value`; `key` is the dotted
/// name of `value`, given back with the error of the string that failed.
/// Returns whether anything changed.
pub fn expand(value: &mut toml::Value, key: &str, env: Env<'_>) -> Result<bool, (String, String)> {
    match value {
        toml::Value::String(s) => {
            if !s.contains('$') {
                return Ok(false);
            }
            let expanded = expand_str(s, env).map_err(|e| (key.to_owned(), e))?;
            let changed = expanded != *s;
            *s = expanded;
            Ok(changed)
        }
        toml::Value::Array(items) => {
            let mut changed = false;
            for (i, v) in items.iter_mut().enumerate() {
                changed |= expand(v, &format!("{key}[{i}]"), env)?;
            }
            Ok(changed)
        }
        toml::Value::Table(t) => {
            let mut changed = false;
            for (k, v) in t.iter_mut() {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                changed |= expand(v, &key, env)?;
            }
            Ok(changed)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_and_file_references_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let env = |n: &str| (n == "HOOK").then(|| "https://hooks.example/x".to_owned());
        assert_eq!(
            expand_str("${HOOK}", &env).unwrap(),
            "https://hooks.example/x"
        );
        assert_eq!(
            expand_str(&format!("${{file:{}}}", file.display()), &env).unwrap(),
            "s3cr3t"
        );
        assert_eq!(expand_str("a$$b $${X} $5", &env).unwrap(), "a$$b ${X} $5");
        let e = expand_str("${NOPE}", &env).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        let e = expand_str("${file:/no/such/file}", &env).unwrap_err();
        assert!(e.contains("/no/such/file"), "{e}");
        let e = expand_str("${HOOK", &env).unwrap_err();
        assert!(e.contains("without closing"), "{e}");
    }
}
