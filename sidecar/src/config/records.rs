//! `[records]`: the decision-record sink that `authz-sidecar replay` reads. Off unless
//! `path` is set.

use std::path::PathBuf;

use serde::Deserialize;

/// What the file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecords {
    /// The file records are appended to, one JSON object a line.
    pub path: PathBuf,
    /// The file is rotated once it holds this many bytes (`path.1`, `path.2`, …).
    #[serde(default = "max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept besides the current one; older ones are deleted.
    #[serde(default = "keep")]
    pub keep: usize,
    /// Records waiting for the writer at most; past it, new ones are dropped and counted
    /// (`authz_records_dropped_total`), never waited for.
    #[serde(default = "queue")]
    pub queue: usize,
    /// Parts left out of every record: `principal.<attribute>` (of the principal built
    /// from a token), `context.<key>`.
    #[serde(default)]
    pub omit: Vec<String>,
}

fn max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn keep() -> usize {
    10
}
fn queue() -> usize {
    8_192
}

/// A part of a record left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Omitted {
    PrincipalAttribute(String),
    ContextKey(String),
}

impl std::fmt::Display for Omitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PrincipalAttribute(name) => write!(f, "principal.{name}"),
            Self::ContextKey(name) => write!(f, "context.{name}"),
        }
    }
}

/// Validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: usize,
    pub queue: usize,
    pub omit: Vec<Omitted>,
}

/// `raw` checked; the error names the key and what is wrong.
pub(super) fn parse_records(raw: &RawRecords) -> Result<RecordsConfig, (String, String)> {
    if raw.path.as_os_str().is_empty() || raw.path.file_name().is_none() {
        return Err(("records.path".into(), format!("`{}` does not name a file", raw.path.display())));
    }
    if raw.max_bytes < 4_096 {
        return Err(("records.max_bytes".into(), format!("{} is below the smallest size, 4096", raw.max_bytes)));
    }
    if raw.queue == 0 {
        return Err(("records.queue".into(), "must be at least 1".into()));
    }
    let omit = raw
        .omit
        .iter()
        .map(|part| {
            let named = |name: &str| !name.is_empty() && !name.contains('.');
            match part.split_once('.') {
                Some(("principal", name)) if named(name) => Ok(Omitted::PrincipalAttribute(name.to_owned())),
                Some(("context", name)) if named(name) => Ok(Omitted::ContextKey(name.to_owned())),
                _ => Err((
                    "records.omit".to_owned(),
                    format!("`{part}` is neither `principal.<attribute>` nor `context.<key>`"),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(RecordsConfig { path: raw.path.clone(), max_bytes: raw.max_bytes, keep: raw.keep, queue: raw.queue, omit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> RawRecords {
        toml::from_str(&format!("path = \"/var/log/authz/records.jsonl\"\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_and_every_bad_value_named() {
        let config = parse_records(&raw("omit = [\"principal.email\", \"context.sourceIp\"]")).unwrap();
        assert_eq!((config.max_bytes, config.keep, config.queue), (64 * 1024 * 1024, 10, 8_192));
        assert_eq!(
            config.omit,
            vec![Omitted::PrincipalAttribute("email".into()), Omitted::ContextKey("sourceIp".into())]
        );
        for bad in ["email", "principal.", "resource.owner", "context.a.b", "principal"] {
            let error = parse_records(&raw(&format!("omit = [\"{bad}\"]"))).unwrap_err();
            assert_eq!(error.0, "records.omit", "{bad}");
            assert!(error.1.contains(bad), "{error:?}");
        }
        assert_eq!(parse_records(&raw("max_bytes = 100")).unwrap_err().0, "records.max_bytes");
        assert_eq!(parse_records(&raw("queue = 0")).unwrap_err().0, "records.queue");
        let no_file: RawRecords = toml::from_str("path = \"/\"").unwrap();
        assert_eq!(parse_records(&no_file).unwrap_err().0, "records.path");
        assert!(toml::from_str::<RawRecords>("path = \"x\"\nsample = 1").is_err(), "unknown keys are refused");
    }
}
