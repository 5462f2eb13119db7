//! `[policies.shadow]`: a candidate policy set decided beside the serving one, off the
//! request path, never changing an answer. Off unless the table is there.

use std::path::PathBuf;

use serde::Deserialize;

use super::raw::{RawAvp, SourceKind};
use super::{AvpSource, PolicySource};

/// What the file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// `files` (the `dir` directory) or `avp` (the `[policies.shadow.avp]` store).
    #[serde(default = "files")]
    pub source: SourceKind,
    /// The candidate's `*.cedar` and `*.cedarschema` files (with `source = "files"`).
    pub dir: Option<PathBuf>,
    pub avp: Option<RawAvp>,
    /// The share of decisions also decided by the candidate.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Decisions waiting for the candidate at most; past it, new ones are not shadowed
    /// (counted in `authz_shadow_dropped_total`), never waited for.
    #[serde(default = "queue")]
    pub queue: usize,
}

fn files() -> SourceKind {
    SourceKind::Files
}
fn one() -> f64 {
    1.0
}
fn queue() -> usize {
    4_096
}

/// Validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Where the candidate's policies and schema come from; its entities are the
    /// serving set's (`policies.entities`).
    pub source: PolicySource,
    /// The candidate's policy directory (with [`PolicySource::Files`]).
    pub dir: PathBuf,
    pub sample_ratio: f64,
    pub queue: usize,
}

/// `raw` checked (files are watched and polled as the serving set's are); the error
/// names the key and what is wrong.
pub(super) fn parse_shadow(
    raw: &RawShadow,
    avp_source: impl Fn(&RawAvp, &str) -> Result<AvpSource, (String, String)>,
) -> Result<ShadowConfig, (String, String)> {
    if !(0.0..=1.0).contains(&raw.sample_ratio) || raw.sample_ratio == 0.0 {
        return Err((
            "policies.shadow.sample_ratio".into(),
            format!("{} is not above 0 and at most 1", raw.sample_ratio),
        ));
    }
    if raw.queue == 0 {
        return Err(("policies.shadow.queue".into(), "must be at least 1".into()));
    }
    let (source, dir) = match (raw.source, &raw.dir, &raw.avp) {
        (SourceKind::Files, Some(dir), None) => (PolicySource::Files, dir.clone()),
        (SourceKind::Files, None, _) => {
            return Err(("policies.shadow.dir".into(), "the candidate's policy directory is required".into()));
        }
        (SourceKind::Files, Some(_), Some(_)) => {
            return Err(("policies.shadow.avp".into(), "only with `source = \"avp\"`".into()));
        }
        (SourceKind::Avp, None, Some(avp)) => {
            (PolicySource::VerifiedPermissions(avp_source(avp, "policies.shadow.avp")?), PathBuf::new())
        }
        (SourceKind::Avp, Some(_), _) => {
            return Err(("policies.shadow.dir".into(), "only with `source = \"files\"`".into()));
        }
        (SourceKind::Avp, None, None) => {
            return Err((
                "policies.shadow.source".into(),
                "`avp` needs a `[policies.shadow.avp]` table with `policy_store_id`".into(),
            ));
        }
    };
    Ok(ShadowConfig { source, dir, sample_ratio: raw.sample_ratio, queue: raw.queue })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ShadowConfig, (String, String)> {
        let raw: RawShadow = toml::from_str(text).unwrap();
        parse_shadow(&raw, |avp, key| {
            if avp.policy_store_id.is_empty() {
                return Err((format!("{key}.policy_store_id"), "must not be empty".into()));
            }
            Ok(AvpSource {
                policy_store_id: avp.policy_store_id.clone(),
                poll_interval: avp.poll_interval,
                max_calls_per_refresh: avp.max_calls_per_refresh,
            })
        })
    }

    #[test]
    fn files_or_a_store_and_every_bad_value_named() {
        let files = parse("dir = \"candidate\"").unwrap();
        assert_eq!(
            (files.source, files.dir.to_str(), files.sample_ratio, files.queue),
            (PolicySource::Files, Some("candidate"), 1.0, 4_096)
        );
        let avp = parse("source = \"avp\"\n[avp]\npolicy_store_id = \"ps-1\"").unwrap();
        assert!(matches!(avp.source, PolicySource::VerifiedPermissions(ref s) if s.policy_store_id == "ps-1"));
        for (text, key) in [
            ("", "policies.shadow.dir"),
            ("dir = \"c\"\nsample_ratio = 0.0", "policies.shadow.sample_ratio"),
            ("dir = \"c\"\nsample_ratio = 1.5", "policies.shadow.sample_ratio"),
            ("dir = \"c\"\nqueue = 0", "policies.shadow.queue"),
            ("source = \"avp\"", "policies.shadow.source"),
            ("source = \"avp\"\ndir = \"c\"", "policies.shadow.dir"),
            ("dir = \"c\"\n[avp]\npolicy_store_id = \"ps-1\"", "policies.shadow.avp"),
            ("source = \"avp\"\n[avp]\npolicy_store_id = \"\"", "policies.shadow.avp.policy_store_id"),
        ] {
            assert_eq!(parse(text).unwrap_err().0, key, "{text}");
        }
    }
}
