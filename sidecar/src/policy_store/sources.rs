//! Reading the policy and entity directories from disk.
//!
//! Blocking file I/O lives here and only here; the async side calls it through
//! `spawn_blocking`. A read gives every file's text and one digest of all of them, so
//! the reloader can tell "nothing changed" without parsing, and every sidecar of a fleet
//! that reads the same files reports the same snapshot version.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::diagnostics::{LoadError, Problem};

/// Where a file snapshot comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceDirs {
    pub policies: PathBuf,
    pub entities: PathBuf,
}

impl SourceDirs {
    pub fn new(policies: impl Into<PathBuf>, entities: impl Into<PathBuf>) -> Self {
        Self { policies: policies.into(), entities: entities.into() }
    }
}

/// One file's path and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The text of every file a snapshot is built from, and their digest.
#[derive(Debug, Clone)]
pub struct Sources {
    pub schemas: Vec<SourceFile>,
    pub policies: Vec<SourceFile>,
    pub entities: Vec<SourceFile>,
    /// Hex SHA-256 over every file's name and text, in a fixed order.
    pub digest: String,
}

/// File name suffixes, exactly as a security team puts them in git.
pub const SCHEMA_SUFFIX: &str = ".cedarschema";
pub const POLICY_SUFFIX: &str = ".cedar";
pub const ENTITIES_SUFFIX: &str = ".json";

impl Sources {
    /// Read the top level of both directories (sub-directories such as `policies/tests`
    /// are not part of the snapshot). Hidden entries are skipped, which also skips the
    /// `..data` indirection of a Kubernetes ConfigMap mount while following its links.
    pub fn read(dirs: &SourceDirs) -> Result<Self, LoadError> {
        let mut problems = Vec::new();
        let policy_files = list(&dirs.policies, &mut problems);
        let entity_files = list(&dirs.entities, &mut problems);

        let mut schemas = Vec::new();
        let mut policies = Vec::new();
        for path in policy_files {
            let name = file_name(&path);
            if name.ends_with(SCHEMA_SUFFIX) {
                schemas.extend(read_one(&path, &mut problems));
            } else if name.ends_with(POLICY_SUFFIX) {
                policies.extend(read_one(&path, &mut problems));
            }
        }
        let entities: Vec<_> = entity_files
            .into_iter()
            .filter(|p| file_name(p).ends_with(ENTITIES_SUFFIX))
            .filter_map(|p| read_one(&p, &mut problems))
            .collect();

        if problems.is_empty() {
            if schemas.is_empty() {
                problems.push(Problem::new(
                    &dirs.policies,
                    None,
                    format!("no schema: expected a `*{SCHEMA_SUFFIX}` file in this directory"),
                ));
            }
            if policies.is_empty() {
                problems.push(Problem::new(
                    &dirs.policies,
                    None,
                    format!("no policies: expected at least one `*{POLICY_SUFFIX}` file in this directory"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(LoadError::new(problems));
        }
        let digest = digest([&schemas, &policies, &entities]);
        Ok(Self { schemas, policies, entities, digest })
    }
}

/// The entity files of one directory and their digest, for snapshots whose policies come
/// from elsewhere (a Verified Permissions store).
#[derive(Debug, Clone)]
pub struct EntitySources {
    pub entities: Vec<SourceFile>,
    /// Hex SHA-256 over every file's name and text.
    pub digest: String,
}

impl EntitySources {
    /// Read the top level of `dir` (the same rules as [`Sources::read`]).
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let mut problems = Vec::new();
        let entities: Vec<_> = list(dir, &mut problems)
            .into_iter()
            .filter(|p| file_name(p).ends_with(ENTITIES_SUFFIX))
            .filter_map(|p| read_one(&p, &mut problems))
            .collect();
        if !problems.is_empty() {
            return Err(LoadError::new(problems));
        }
        let digest = digest([&Vec::new(), &Vec::new(), &entities]);
        Ok(Self { entities, digest })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Regular files (following symlinks) at the top of `dir`, sorted by name.
fn list(dir: &Path, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(Problem::new(dir, None, format!("cannot read the directory: {e}")));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| !file_name(p).starts_with('.'))
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    files
}

fn read_one(path: &Path, problems: &mut Vec<Problem>) -> Option<SourceFile> {
    match fs::read_to_string(path) {
        Ok(text) => Some(SourceFile { path: path.to_path_buf(), text }),
        Err(e) => {
            problems.push(Problem::new(path, None, format!("cannot read the file: {e}")));
            None
        }
    }
}

fn digest(groups: [&Vec<SourceFile>; 3]) -> String {
    let mut hasher = Sha256::new();
    for (tag, group) in ["schema", "policies", "entities"].iter().zip(groups) {
        hasher.update(tag.as_bytes());
        for file in group {
            hasher.update(file_name(&file.path).as_bytes());
            hasher.update([0]);
            hasher.update((file.text.len() as u64).to_be_bytes());
            hasher.update(file.text.as_bytes());
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
