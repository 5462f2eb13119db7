//! The environment's part in the configuration, as twelve-factor deployments expect:
//!
//! - **`${NAME}` in any string value** is replaced by the variable's value;
//!   `${NAME:-fallback}` uses `fallback` when `NAME` is unset or empty; `$${` is a
//!   literal `${`. A variable that is unset, with no fallback, is an error: a
//!   configuration is never served with a hole where a value was meant to be.
//! - **`AUTHZ_SIDECAR__<KEY>__<KEY>…=value`** sets any key, `__` between the parts of
//!   its path, a number for the place in a list of tables
//!   (`AUTHZ_SIDECAR__SERVER__LISTEN`, `AUTHZ_SIDECAR__ROUTES__0__UPSTREAM`). The value
//!   is read as a TOML value (`30s` and `vpce-1` are strings, `64` a number,
//!   `["a", "b"]` a list); where the file already has a string at that key it stays a
//!   string. Command-line flags still win over both.
//!
//! Both work on the parsed document, never on its text: a value cannot add keys or
//! tables, whatever it holds. Unknown keys are refused later exactly as in a file.

use toml_edit::{DocumentMut, Item, Value};

use super::ConfigError;

/// The prefix of the variables that set keys.
pub const OVERRIDE_PREFIX: &str = "AUTHZ_SIDECAR__";

/// `text` with the environment applied: `lookup` answers `${NAME}`, and `overrides` are
/// the process's `AUTHZ_SIDECAR__…` variables. `text` itself (borrowed) when neither
/// applies, so a file without either is parsed exactly as written.
pub(super) fn apply<'t>(
    text: &'t str,
    origin: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<std::borrow::Cow<'t, str>, ConfigError> {
    if !text.contains("${") && overrides.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(text));
    }
    let parse_error = |message: String| ConfigError::Parse { origin: origin.to_owned(), message };
    let mut document: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| parse_error(e.to_string()))?;
    let invalid =
        |key: &str, message: String| ConfigError::Invalid { origin: origin.to_owned(), key: key.to_owned(), message };
    expand_item(document.as_item_mut(), &mut String::new(), lookup, &invalid)?;
    let mut overrides: Vec<&(String, String)> = overrides.iter().collect();
    overrides.sort();
    for (name, value) in overrides {
        set(&mut document, name, value, &invalid)?;
    }
    Ok(std::borrow::Cow::Owned(document.to_string()))
}

/// The process's `AUTHZ_SIDECAR__…` variables (names and values that are not Unicode
/// cannot name a key, and are refused by name rather than skipped).
pub(super) fn process_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(text) = name.to_str() else { continue };
        if !text.starts_with(OVERRIDE_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| ConfigError::Invalid {
            origin: "environment".to_owned(),
            key: text.to_owned(),
            message: "the value is not UTF-8".to_owned(),
        })?;
        found.push((text.to_owned(), value));
    }
    Ok(found)
}

type Invalid<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

/// Expand `${…}` in every string under `item`, whose key path is `path`.
fn expand_item(
    item: &mut Item,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    match item {
        Item::Value(value) => expand_value(value, path, lookup, invalid),
        Item::Table(table) => expand_table(table, path, lookup, invalid),
        Item::ArrayOfTables(tables) => {
            for (i, table) in tables.iter_mut().enumerate() {
                let len = push_index(path, i);
                expand_table(table, path, lookup, invalid)?;
                path.truncate(len);
            }
            Ok(())
        }
        Item::None => Ok(()),
    }
}

/// [`expand_item`] for each key of `table`.
fn expand_table(
    table: &mut toml_edit::Table,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    for (key, child) in table.iter_mut() {
        let len = push(path, key.get());
        expand_item(child, path, lookup, invalid)?;
        path.truncate(len);
    }
    Ok(())
}

fn expand_value(
    value: &mut Value,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) if text.value().contains('$') => {
            let expanded = expand(text.value(), lookup).map_err(|message| invalid(path, message))?;
            let decor = text.decor().clone();
            let mut replaced = toml_edit::Formatted::new(expanded);
            *replaced.decor_mut() = decor;
            *text = replaced;
            Ok(())
        }
        Value::Array(array) => {
            for (i, element) in array.iter_mut().enumerate() {
                let len = push_index(path, i);
                expand_value(element, path, lookup, invalid)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::InlineTable(table) => {
            for (key, child) in table.iter_mut() {
                let len = push(path, key.get());
                expand_value(child, path, lookup, invalid)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Append `.key` to `path` (no dot at the start); the length to truncate back to.
fn push(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    len
}

/// Append `[i]` to `path`; the length to truncate back to.
fn push_index(path: &mut String, i: usize) -> usize {
    let len = path.len();
    path.push_str(&format!("[{i}]"));
    len
}

/// `text` with every `${NAME}` and `${NAME:-fallback}` replaced and `$${` made `${`.
/// A `$` not followed by `{` is left as it is.
fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = inner.find('}') else {
            return Err(format!("`${{` without its closing `}}` in `{text}` (write `$${{` for a literal `${{`)"));
        };
        let reference = &inner[..end];
        let (name, fallback) = match reference.split_once(":-") {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{reference}}}`: a variable name is letters, digits and `_` (write `$${{` for a literal `${{`)"
            ));
        }
        match (lookup(name), fallback) {
            (Some(value), Some(fallback)) if value.is_empty() => out.push_str(fallback),
            (Some(value), _) => out.push_str(&value),
            (None, Some(fallback)) => out.push_str(fallback),
            (None, None) => {
                return Err(format!(
                    "`${{{name}}}` is not set in the environment (give a fallback with `${{{name}:-…}}`)"
                ));
            }
        }
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Set the key `name` (an `AUTHZ_SIDECAR__…` variable) names to `raw`.
fn set(document: &mut DocumentMut, name: &str, raw: &str, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    let parts: Vec<String> =
        name.strip_prefix(OVERRIDE_PREFIX).unwrap_or(name).split("__").map(str::to_ascii_lowercase).collect();
    if parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(invalid(name, "names no key: write the key's path with `__` between its parts".to_owned()));
    }
    let key = parts.join(".");
    let refuse = |why: String| invalid(&key, format!("{name}: {why}"));
    set_in(document.as_table_mut(), &parts, raw, &refuse)
}

/// Set the key at `parts` under `table` to `raw`, making the tables on the way that
/// are missing.
fn set_in(
    table: &mut toml_edit::Table,
    parts: &[String],
    raw: &str,
    refuse: &dyn Fn(String) -> ConfigError,
) -> Result<(), ConfigError> {
    let Some((part, rest)) = parts.split_first() else { return Err(refuse("names no key".to_owned())) };
    if rest.is_empty() {
        assign(table, part, raw);
        return Ok(());
    }
    match table.entry(part).or_insert_with(toml_edit::table) {
        Item::Table(inner) => set_in(inner, rest, raw, refuse),
        Item::ArrayOfTables(entries) => {
            let Some((place, rest)) = rest.split_first() else { return Err(refuse("names no key".to_owned())) };
            let index: usize = place.parse().map_err(|_| refuse(format!("`{place}` is not a place in `{part}`")))?;
            let count = entries.len();
            let entry = entries
                .get_mut(index)
                .ok_or_else(|| refuse(format!("`{part}` has {count} entries, so no entry {index}")))?;
            if rest.is_empty() {
                return Err(refuse(format!("names a whole entry of `{part}`: name a key in it")));
            }
            set_in(entry, rest, raw, refuse)
        }
        Item::Value(Value::InlineTable(_)) => {
            Err(refuse(format!("`{part}` is an inline table: set the whole of it instead")))
        }
        _ => Err(refuse(format!("`{part}` is not a table"))),
    }
}

/// Set `key` in `table` to `raw`, read as a TOML value, or as a string where the key
/// holds a string already or `raw` is not a TOML value.
fn assign(table: &mut toml_edit::Table, key: &str, raw: &str) {
    let was_string = matches!(table.get(key), Some(Item::Value(Value::String(_))));
    let value = match raw.parse::<Value>() {
        Ok(parsed) if !was_string => parsed,
        _ => Value::from(raw),
    };
    table.insert(key, Item::Value(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REGION" => Some("eu-west-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn applied(text: &str, overrides: &[(&str, &str)]) -> Result<String, ConfigError> {
        let overrides: Vec<(String, String)> =
            overrides.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        apply(text, "t", &env, &overrides).map(std::borrow::Cow::into_owned)
    }

    #[test]
    fn variables_expand_in_strings_with_fallbacks_and_escapes() {
        assert_eq!(expand("${REGION}", &env).unwrap(), "eu-west-1");
        assert_eq!(expand("a-${REGION}-b ${REGION}", &env).unwrap(), "a-eu-west-1-b eu-west-1");
        assert_eq!(expand("${UNSET:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand("${UNSET:-}", &env).unwrap(), "");
        assert_eq!(expand("$${REGION} $5 $", &env).unwrap(), "${REGION} $5 $");
        let err = expand("${UNSET}", &env).unwrap_err();
        assert!(err.contains("`${UNSET}` is not set"), "{err}");
        assert!(expand("${REGION", &env).unwrap_err().contains("closing"));
        assert!(expand("${A B}", &env).unwrap_err().contains("variable name"));
        assert!(expand("${}", &env).unwrap_err().contains("variable name"));
    }

    proptest::proptest! {
        /// A string with no `${` is left as it is, and a variable's value is used as it
        /// is: never expanded again, whatever it holds.
        #[test]
        fn text_without_references_stays_and_values_are_never_expanded_again(
            text in "[^{]*",
            value in ".*",
        ) {
            proptest::prop_assert_eq!(expand(&text, &env).unwrap(), text);
            let lookup = |name: &str| (name == "V").then(|| value.clone());
            proptest::prop_assert_eq!(expand("${V}", &lookup).unwrap(), value.clone());
            proptest::prop_assert_eq!(expand("<${V:-x}>", &lookup).unwrap(),
                format!("<{}>", if value.is_empty() { "x" } else { value.as_str() }));
        }
    }

    #[test]
    fn expansion_reaches_every_string_and_cannot_add_structure() {
        let text = "[aws]\nregion = \"${REGION}\" # kept\n[[routes]]\nname = \"a\"\nheaders = [\"${REGION}\", { x = \"${REGION}\" }]\n";
        let out = applied(text, &[]).unwrap();
        assert!(out.contains("region = \"eu-west-1\" # kept"), "{out}");
        assert_eq!(out.matches("eu-west-1").count(), 3, "{out}");
        // a value that looks like TOML stays one string
        let hostile = |name: &str| (name == "X").then(|| "\"\n[evil]\nkey = \"1".to_owned());
        let out = apply("a = \"${X}\"\n", "t", &hostile, &[]).unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed.len(), 1, "{out}");
        assert_eq!(parsed["a"].as_str(), Some("\"\n[evil]\nkey = \"1"));
        // an unset variable names its key
        let err = applied("[server]\nlisten = \"${UNSET}\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("server.listen") && err.contains("${UNSET}"), "{err}");
        // a file with neither is the same text
        assert_eq!(applied("a = 1 # c\n", &[]).unwrap(), "a = 1 # c\n");
    }

    #[test]
    fn overrides_set_any_key_typed_as_toml_or_as_the_string_the_file_has() {
        let text = "[server]\nlisten = \"127.0.0.1:8080\"\nmax_connections = 10\n[[routes]]\nname = \"a\"\n[[routes]]\nname = \"b\"\n";
        let out = applied(
            text,
            &[
                ("AUTHZ_SIDECAR__SERVER__LISTEN", "0.0.0.0:9000"),
                ("AUTHZ_SIDECAR__SERVER__MAX_CONNECTIONS", "64"),
                ("AUTHZ_SIDECAR__SERVER__SHUTDOWN_GRACE", "30s"),
                ("AUTHZ_SIDECAR__ROUTES__1__UPSTREAM", "http://app:8080"),
                ("AUTHZ_SIDECAR__AWS__REGION", "eu-west-1"),
                ("AUTHZ_SIDECAR__CONTEXT__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
            ],
        )
        .unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["server"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(parsed["server"]["max_connections"].as_integer(), Some(64));
        assert_eq!(parsed["server"]["shutdown_grace"].as_str(), Some("30s"));
        assert_eq!(parsed["routes"][1]["upstream"].as_str(), Some("http://app:8080"));
        assert_eq!(parsed["routes"][1]["name"].as_str(), Some("b"));
        assert!(parsed["routes"][0].get("upstream").is_none());
        assert_eq!(parsed["aws"]["region"].as_str(), Some("eu-west-1"));
        assert_eq!(parsed["context"]["trusted_proxies"][0].as_str(), Some("10.0.0.0/8"));
        // a string in the file stays a string
        let out = applied(
            "[policies.avp]\npolicy_store_id = \"x\"\n",
            &[("AUTHZ_SIDECAR__POLICIES__AVP__POLICY_STORE_ID", "123")],
        )
        .unwrap();
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["policies"]["avp"]["policy_store_id"].as_str(), Some("123"));
        // an override is not expanded
        let out = applied("", &[("AUTHZ_SIDECAR__AWS__REGION", "${REGION}")]).unwrap();
        assert!(out.contains("\"${REGION}\""), "{out}");
    }

    #[test]
    fn an_override_that_names_no_key_it_can_reach_is_refused() {
        let text = "[server]\nlisten = \"x\"\n[[routes]]\nname = \"a\"\n";
        for (name, why) in [
            ("AUTHZ_SIDECAR__ROUTES__3__UPSTREAM", "no entry 3"),
            ("AUTHZ_SIDECAR__ROUTES__X__UPSTREAM", "not a place"),
            ("AUTHZ_SIDECAR__ROUTES__0", "whole entry"),
            ("AUTHZ_SIDECAR__SERVER__LISTEN__PORT", "not a table"),
            ("AUTHZ_SIDECAR__SERVER____LISTEN", "names no key"),
            ("AUTHZ_SIDECAR__SERVER__LIS-TEN", "names no key"),
        ] {
            let err = applied(text, &[(name, "1")]).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
    }
}
