//! Decision records and `replay`: the real binary writes a record for every decision
//! of real requests; `replay` decides them again under candidate policy sets.
//!
//! What each candidate must report is worked out from the records themselves (every
//! recorded allow, every deny no forbid made), so the assertions say exactly which
//! requests change, not only how many.

use std::path::{Path, PathBuf};
use std::time::Duration;

use authz_sidecar::config::Config;
use serde_json::{Value, json};

use crate::binary::start_binary;
use crate::harness::{self, Jwks, Setup, TestServer, config_toml, keys, token};
use crate::support::{Output, Workspace, copy_dir};

const POOL_ROUTE: &str = "[[routes]]\nname = \"account-pool\"\nmethod = \"POST\"\npath = \"/datazone/account-pool\"\nhandler = \"account_pool\"\n";
const POOL_USER: &str = "4b89ed84-9842-45dd-a2e5-15e49eda2b03";
const DOMAIN: &str = "dzd-4igt64u5j25ko9";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is one JSON record"))
        .collect()
}

/// The shipped policies copied to `name`, with `edit` applied to `presign.cedar`.
fn candidate(ws: &Workspace, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = ws.dir.path().join(name);
    copy_dir(&ws.policies(), &dir);
    let presign = dir.join("presign.cedar");
    std::fs::write(&presign, edit(std::fs::read_to_string(&presign).unwrap())).unwrap();
    dir
}

fn replay(ws: &Workspace, policies: &Path, records: &Path, more: &[&str]) -> (Output, Value) {
    let mut args = vec!["replay", "--json", "--examples", "100", records.to_str().unwrap()];
    args.extend_from_slice(more);
    let mut full: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    full.extend(["--policies".into(), policies.display().to_string()]);
    full.extend(["--entities".into(), ws.entities().display().to_string()]);
    let output = crate::support::run_cli(&full.iter().map(String::as_str).collect::<Vec<_>>());
    let report = serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("{e}: {output:?}"));
    (output, report)
}

/// The request ids of the report's groups of `change`, each as often as it changed
/// (an account-pool call makes two decisions: may this caller ask, and the question).
fn changed(report: &Value, change: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for group in report["report"]["groups"].as_array().unwrap() {
        if group["change"] == change {
            assert_eq!(group["count"].as_u64().unwrap() as usize, group["examples"].as_array().unwrap().len());
            for example in group["examples"].as_array().unwrap() {
                ids.push(example["request_id"].as_str().unwrap().to_owned());
            }
        }
    }
    ids.sort();
    ids
}

fn ids_where(records: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut ids: Vec<String> =
        records.iter().filter(|r| keep(r)).map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_the_binarys_records_lists_exactly_what_a_candidate_changes() {
    let ws = Workspace::shipped();
    let upstream = TestServer::start(|_| (200, "ok".to_owned(), Duration::ZERO)).await;
    let (key, _) = keys();
    let jwks = Jwks::start(&[key]).await;
    let path = ws.dir.path().join("records").join("decisions.jsonl");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let setup = Setup { extra: POOL_ROUTE.to_owned(), ..Setup::default() };
    let mut toml = config_toml(&ws, &jwks.url(), &upstream.url(), &setup);
    toml.push_str(&format!("\n[records]\npath = \"{}\"\nomit = [\"principal.email\"]\n", path.display()));
    Config::from_toml(&toml, "test").expect("the test's configuration is valid");
    let config = ws.dir.path().join("records.toml");
    std::fs::write(&config, toml).unwrap();
    let running = start_binary(&["--config", config.to_str().unwrap()], &[], &ws.dir.path().join("log")).await;

    // allowed, denied by a forbid, denied for want of a permit; the account pool's
    // caller check and its GRANT and DENY questions
    let lob_a = "vpce-0a1a000000000001a";
    let lob_b = "vpce-0b2b000000000001b";
    let calls = [
        ("user-1", vec!["Team1", "Team2"], "/studio/user-1/team1", lob_a, 200),
        ("user-1", vec!["Team1", "Team2"], "/studio/user-1/team2", lob_a, 200),
        ("user-1", vec!["Team1"], "/studio/user-1/team2", lob_a, 403),
        ("user-1", vec!["Team1", "Team2"], "/studio/user-2/team2", lob_b, 403),
        ("user-1", vec!["Team1", "Team2"], "/studio/user-1/team1", lob_b, 403),
    ];
    for (user, groups, target, vpce, status) in &calls {
        let auth = format!("Bearer {}", token(user, groups));
        let headers = [("authorization", auth.as_str()), ("x-amzn-vpce-id", *vpce), ("x-forwarded-for", "10.1.2.3")];
        assert_eq!(harness::get(running.data, target, &headers).await.0, *status, "{user} {target}");
    }
    let auth = format!("Bearer {}", token("datazone-service", &["DataZoneAccountPool"]));
    for (account, region) in [("004878717744", "us-east-2"), ("333333333333", "us-east-1")] {
        let event = json!({"operationRequest": {"listAuthorizedAccountsRequest": null,
            "validateAccountAuthorizationRequest": {"domainIdentifier": DOMAIN, "awsAccountId": account,
                "regionName": region, "userIdentifier": POOL_USER}}});
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let (status, _, body) =
            harness::request(running.data, "POST", "/datazone/account-pool", &headers, event.to_string().into_bytes())
                .await;
        assert_eq!(status, 200, "{body}");
    }

    // 5 Studio decisions, 2 of the pool route's caller, 2 account questions
    let mut written = Vec::new();
    for _ in 0..200 {
        written = records(&path);
        if written.len() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(written.len(), 9, "one record per decision: {written:#?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("eyJ") && !text.contains("user-1@example.com"), "no token, no omitted attribute");
    let studio = written.iter().find(|r| r["route"] == "studio").unwrap();
    assert_eq!(studio["principal_entity"]["uid"]["id"], "user-1", "the principal as the token built it");
    assert_eq!(studio["omitted"], json!(["principal.email"]));
    assert!(written.iter().any(|r| r["operation"] == "validateAccountAuthorization" && r["decision"] == "allow"));
    assert!(written.iter().any(|r| r["operation"] == "validateAccountAuthorization" && r["decision"] == "deny"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
    }
    let allowed = ids_where(&written, |r| r["decision"] == "allow" && r["route"] == "studio");
    let every_allow = ids_where(&written, |r| r["decision"] == "allow");
    let no_permit = ids_where(&written, |r| r["reason"] == "no_permit");
    assert_eq!(allowed.len(), 2);
    assert!(!no_permit.is_empty(), "a deny no forbid made: {written:#?}");

    // an unchanged candidate reports nothing
    let (output, report) = replay(&ws, &ws.policies(), &path, &[]);
    assert_eq!(output.code, 0, "{output:?}");
    assert_eq!(report["report"]["records"], 9);
    assert_eq!(report["report"]["unchanged"], 9, "{report:#}");
    assert_eq!(report["report"]["groups"], json!([]));
    assert_eq!(report["report"]["with_omissions"], 5, "the Studio records lost the principal's email");

    // removing the Studio permit narrows exactly the Studio allows
    let removed = candidate(&ws, "without-permit", |text| {
        text.replacen("@id(\"presign-own-profile\")\npermit", "@id(\"presign-own-profile\")\nforbid", 1).replacen(
            "resource.owner == principal &&",
            "false && resource.owner == principal &&",
            1,
        )
    });
    let (output, report) = replay(&ws, &removed, &path, &[]);
    assert_eq!(output.code, 0, "narrowing passes the gate by default: {output:?}");
    assert_eq!(changed(&report, "narrowed"), allowed);
    assert_eq!(changed(&report, "widened"), Vec::<String>::new());
    let narrowed = report["report"]["groups"].as_array().unwrap().iter().find(|g| g["change"] == "narrowed").unwrap();
    assert_eq!(narrowed["route"], "studio");
    assert_eq!(narrowed["before"]["policies"], json!(["presign-own-profile"]));
    assert_eq!(narrowed["after"]["reason"], "no_permit");
    let (output, report) = replay(&ws, &removed, &path, &["--fail-on-narrowing"]);
    assert_eq!(output.code, 1, "{output:?}");
    assert_eq!(report["gate"]["passed"], false);

    // a broad permit widens exactly the denials no forbid made, and fails the gate
    let broad =
        candidate(&ws, "broad", |text| format!("{text}\n@id(\"everyone\")\npermit (principal, action, resource);\n"));
    let (output, report) = replay(&ws, &broad, &path, &[]);
    assert_eq!(output.code, 1, "widening fails the gate: {output:?}");
    assert_eq!(changed(&report, "widened"), no_permit);
    assert!(report["gate"]["failures"][0].as_str().unwrap().contains("would be allowed"), "{report:#}");
    let widened = report["report"]["groups"].as_array().unwrap().iter().find(|g| g["change"] == "widened").unwrap();
    assert_eq!(widened["after"]["policies"], json!(["everyone"]));
    // the allows it also decides are listed as decided by other policies, not as flips
    assert_eq!(changed(&report, "policies"), every_allow);
    let (output, _) = replay(&ws, &broad, &path, &["--allow-widening"]);
    assert_eq!(output.code, 0, "{output:?}");

    // records on standard input, as from `zcat` of archived files, to the real binary
    let mut child = std::process::Command::new(crate::binary::binary())
        .args(["replay", "--json", "--policies", broad.to_str().unwrap(), "--entities"])
        .arg(ws.entities())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), std::fs::read(&path).unwrap().as_slice()).unwrap();
    let piped = child.wait_with_output().unwrap();
    assert_eq!(piped.status.code(), Some(1), "widening fails the gate: {piped:?}");
    let report: Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(report["report"]["records"], 9);
    assert_eq!(report["report"]["widened"], no_permit.len());

    // the text report names the groups and the gate
    let text = ws.cli(&["replay", "--baseline", ws.policies().to_str().unwrap(), path.to_str().unwrap()]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("compared with `") && text.stdout.contains("9 unchanged"), "{}", text.stdout);

    drop(running);
}

#[test]
fn unreadable_records_and_no_records_fail_the_gate() {
    let ws = Workspace::shipped();
    let bad = ws.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"v\": 1}\nnot json\n").unwrap();
    let out = ws.cli(&["replay", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("bad.jsonl:1: not a decision record"), "{}", out.stderr);
    assert!(out.stderr.contains("bad.jsonl:2: not a decision record"), "{}", out.stderr);
    assert!(out.stdout.contains("2 records could not be read"), "{}", out.stdout);

    let empty = ws.dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = ws.cli(&["replay", empty.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("no records to replay"), "{}", out.stdout);

    let missing = ws.cli(&["replay", ws.dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("cannot read the records"), "{}", missing.stderr);
}

#[tokio::test]
async fn an_unwritable_records_file_stops_serve_before_it_starts() {
    let ws = Workspace::shipped();
    let (key, _) = keys();
    let jwks = Jwks::start(&[key]).await;
    let missing = ws.dir.path().join("no-such-dir").join("decisions.jsonl");
    let mut toml = config_toml(&ws, &jwks.url(), "http://127.0.0.1:9", &Setup::default());
    toml.push_str(&format!("\n[records]\npath = \"{}\"\n", missing.display()));
    let config = Config::from_toml(&toml, "test").unwrap();
    let Err(error) = authz_sidecar::app::App::new(config, false) else {
        panic!("an unwritable records file is refused")
    };
    assert!(error.to_string().contains("cannot write decision records to"), "{error}");
    assert!(error.to_string().contains("no-such-dir"), "{error}");
}
