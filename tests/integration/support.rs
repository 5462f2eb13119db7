//! Shared helpers: the shipped files copied to a scratch directory, and the CLI run
//! in-process with its output captured.

use std::path::{Path, PathBuf};

use authz_sidecar::policy_store::SourceDirs;

/// The repository root (the workspace holds `policies/` and `entities/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// One shared snapshot of the shipped files, for tests that only read it.
pub fn shipped_snapshot() -> std::sync::Arc<authz_sidecar::policy_store::PolicySnapshot> {
    use authz_sidecar::policy_store::PolicyStore;
    static STORE: std::sync::OnceLock<(Workspace, PolicyStore)> = std::sync::OnceLock::new();
    let (_, store) = STORE.get_or_init(|| {
        let ws = Workspace::shipped();
        let store = PolicyStore::load_files(&ws.dirs()).expect("the shipped files load");
        (ws, store)
    });
    store.current().unwrap()
}

/// The shipped files with one more policy file, holding each of `extra` that `on`
/// turns on (as `@id("extra-<i>")`, `i` its place in `extra`), and one more entity file
/// holding `entities`: built as the sidecar builds a snapshot.
pub fn shipped_with(
    extra: &[&str],
    on: &[bool],
    entities: Vec<serde_json::Value>,
) -> authz_sidecar::policy_store::PolicySnapshot {
    use authz_sidecar::policy_store::{PolicySnapshot, SnapshotSource, SourceFile, Sources};
    let root = repo_root();
    let dirs = SourceDirs::new(root.join("policies"), root.join("entities"));
    let mut sources = Sources::read(&dirs).unwrap();
    let policies: Vec<String> = extra
        .iter()
        .enumerate()
        .zip(on)
        .filter(|(_, on)| **on)
        .map(|((i, policy), _)| format!("@id(\"extra-{i}\")\n{policy}"))
        .collect();
    sources.policies.push(SourceFile { path: "extra.cedar".into(), text: policies.join("\n") });
    sources
        .entities
        .push(SourceFile { path: "generated.json".into(), text: serde_json::Value::Array(entities).to_string() });
    PolicySnapshot::from_sources(&sources, SnapshotSource::Files(dirs), 1).unwrap()
}

/// A scratch copy of the shipped `policies/` (with its tests) and `entities/`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn shipped() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&repo_root().join("policies"), &dir.path().join("policies"));
        copy_dir(&repo_root().join("entities"), &dir.path().join("entities"));
        Self { dir }
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn entities(&self) -> PathBuf {
        self.dir.path().join("entities")
    }

    pub fn dirs(&self) -> SourceDirs {
        SourceDirs::new(self.policies(), self.entities())
    }

    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let path = self.policies().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    pub fn write_entities(&self, name: &str, text: &str) -> PathBuf {
        let path = self.entities().join(name);
        std::fs::write(&path, text).expect("write entities");
        path
    }

    /// Run the CLI with `--policies` and `--entities` pointing here.
    pub fn cli(&self, args: &[&str]) -> Output {
        let policies = self.policies();
        let entities = self.entities();
        let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        full.extend([
            "--policies".to_owned(),
            policies.display().to_string(),
            "--entities".to_owned(),
            entities.display().to_string(),
        ]);
        run_cli(&full.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_cli(args: &[&str]) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let argv = std::iter::once("authz-sidecar").chain(args.iter().copied());
    let code = authz_sidecar::cli::run(argv, &mut stdout, &mut stderr);
    Output { code, stdout: String::from_utf8(stdout).expect("utf8"), stderr: String::from_utf8(stderr).expect("utf8") }
}
