//! The security team's commands, run in-process on the shipped files and on broken ones.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::{Output, Workspace, run_cli};

const USER_1: &str = r#"Studio::User::"user-1""#;
const USER_1_TEAM1: &str = r#"Studio::UserProfile::"user-1-team1""#;
const PRESIGN: &str = "CreatePresignedDomainUrl";
const PRESIGN_CONTEXT: &str = r#"{"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}"#;
const DZ_USER_1: &str = r#"DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03""#;

/// `validate` must exit 1, print nothing on stdout, and say each of `needles` on stderr.
fn assert_validate_fails(ws: &Workspace, needles: &[&str]) -> Output {
    let out = ws.cli(&["validate"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    for needle in needles {
        assert!(out.stderr.contains(needle), "missing {needle:?} in:\n{}", out.stderr);
    }
    out
}

fn authorize(ws: &Workspace, principal: &str, action: &str, resource: &str, extra: &[&str]) -> Output {
    let mut args = vec!["authorize", "--principal", principal, "--action", action, "--resource", resource];
    args.extend_from_slice(extra);
    ws.cli(&args)
}

/// A directory of decision tables holding one table.
fn tables(ws: &Workspace, file: &str, text: &str) -> PathBuf {
    let dir = ws.dir.path().join(format!("tables-{file}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
    dir
}

#[test]
fn help_explains_every_command() {
    let out = run_cli(&["--help"]);
    assert_eq!(out.code, 0);
    for word in ["validate", "authorize", "test", "Exit codes"] {
        assert!(out.stdout.contains(word), "--help lacks {word}:\n{}", out.stdout);
    }
    let out = run_cli(&["authorize", "--help"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("--principal") && out.stdout.contains("--context"), "{}", out.stdout);
}

#[test]
fn unknown_command_is_a_usage_error() {
    let out = run_cli(&["frobnicate"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("frobnicate"), "{}", out.stderr);
}

#[test]
fn validate_passes_on_the_shipped_files_with_a_one_line_summary() {
    let ws = Workspace::shipped();
    let out = ws.cli(&["validate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stdout.starts_with("valid: 13 policies and 22 entities"), "{}", out.stdout);
    assert!(out.stderr.is_empty(), "warnings on the shipped files: {}", out.stderr);
}

#[test]
fn validate_notes_a_policy_that_makes_account_lists_decide_every_account_alone() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "by-value.cedar",
        "@id(\"never-this-account\")\nforbid (principal, action == DataZone::Action::\"UseAccount\", resource)\n\
         when { [resource].contains(DataZone::Account::\"333333333333\") };\n",
    );
    let out = ws.cli(&["validate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("valid: 14 policies"), "{}", out.stdout);
    assert!(out.stderr.starts_with("note: account-pool lists will decide each of the "), "{}", out.stderr);
    assert!(out.stderr.contains("`resource` used as a value"), "{}", out.stderr);
}

#[test]
fn validate_names_file_line_and_column_of_a_syntax_error() {
    let ws = Workspace::shipped();
    ws.write_policy("broken.cedar", "@id(\"broken\")\npermit (principal, action, resource) when { principal == };\n");
    assert_validate_fails(&ws, &["broken.cedar:2:58: unexpected token `}`", "1 problem found"]);
}

#[test]
fn validate_names_a_policy_that_does_not_type_check() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "typo.cedar",
        "// a typo in an attribute name\n@id(\"typo\")\n\
         permit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource)\n\
         when { resource.ownr == principal };\n",
    );
    assert_validate_fails(&ws, &["typo.cedar:4:8: for policy `typo`, attribute `ownr`", "did you mean `owner`?"]);
}

/// Policies are parsed one statement at a time; an error in a later statement, even
/// one that shares a line with the statement before it, still points into the file.
#[test]
fn validate_points_at_an_error_in_a_later_statement_of_a_file() {
    let ws = Workspace::shipped();
    let good = "@id(\"g1\")\npermit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource);\n";
    ws.write_policy(
        "many.cedar",
        &format!(
            "// two good policies, then two on one line\n{good}\n{}@id(\"g3\") permit (principal, action, resource); @id(\"typo\") \
             permit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource) when {{ resource.ownr == principal }};\n",
            good.replace("g1", "g2")
        ),
    );
    assert_validate_fails(&ws, &["many.cedar:7:151: for policy `typo`, attribute `ownr`"]);
}

#[test]
fn validate_rejects_an_unguarded_tag_read_as_strict_validation_requires() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "tags.cedar",
        "@id(\"unguarded\")\npermit (principal, action == Studio::Action::\"CreatePresignedDomainUrl\", resource)\n\
         when { resource.getTag(\"Team\") == \"Team1\" };\n",
    );
    assert_validate_fails(&ws, &["tags.cedar:3:", "tag"]);
}

#[test]
fn validate_names_an_entity_of_an_unknown_type() {
    let ws = Workspace::shipped();
    ws.write_entities(
        "admins.json",
        "[\n  {\"uid\": {\"type\": \"Studio::Admin\", \"id\": \"root\"}, \"attrs\": {}, \"parents\": []}\n]\n",
    );
    assert_validate_fails(&ws, &["admins.json:2:3:", "`Studio::Admin` which is not declared in the schema"]);
}

#[test]
fn validate_names_both_places_of_a_duplicate_policy_id() {
    let ws = Workspace::shipped();
    ws.write_policy("zz-copy.cedar", "\n\n@id(\"presign-own-profile\")\nforbid (principal, action, resource);\n");
    assert_validate_fails(&ws, &["duplicate policy id `presign-own-profile`", "zz-copy.cedar:3:1", "presign.cedar:13"]);
}

#[test]
fn validate_requires_an_id_on_every_policy() {
    let ws = Workspace::shipped();
    ws.write_policy("anonymous.cedar", "// no id\npermit (principal, action, resource);\n");
    assert_validate_fails(&ws, &["anonymous.cedar:2:1: policy has no `@id"]);
}

#[test]
fn validate_lists_every_problem_in_one_run() {
    let ws = Workspace::shipped();
    ws.write_policy("broken.cedar", "@id(\"x\") permit (principal, action, resource) when { ; };\n");
    ws.write_entities(
        "bad.json",
        "[{\"uid\": {\"type\": \"Studio::Team\", \"id\": \"T\"}, \"attrs\": {\"executionRoleName\": 5}, \"parents\": []}]",
    );
    ws.write_entities("worse.json", "[{\"uid\": {\"type\": \"Nope\", \"id\": \"n\"}, \"attrs\": {}, \"parents\": []}]");
    // the policy error stops the entity check (entities are checked against a schema
    // and a policy set that load), so fix-and-rerun shows the entity errors
    assert_validate_fails(&ws, &["broken.cedar:1:"]);
    std::fs::remove_file(ws.policies().join("broken.cedar")).unwrap();
    let out = assert_validate_fails(&ws, &["bad.json:1:2:", "type mismatch", "worse.json:1:2:"]);
    assert!(out.stderr.ends_with("2 problems found\n"), "{}", out.stderr);
}

#[test]
fn validate_warns_about_references_to_undefined_entities_but_passes() {
    let ws = Workspace::shipped();
    ws.write_entities(
        "typo.json",
        "[{\"uid\": {\"type\": \"Studio::User\", \"id\": \"u9\"}, \"attrs\": {}, \
         \"parents\": [{\"type\": \"Studio::Team\", \"id\": \"Team9\"}]}]",
    );
    let out = ws.cli(&["validate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("warning: ") && out.stderr.contains("`Studio::Team::\"Team9\"`"), "{}", out.stderr);
}

#[test]
fn validate_fails_without_a_schema_or_policies() {
    let ws = Workspace::shipped();
    std::fs::remove_file(ws.policies().join("schema.cedarschema")).unwrap();
    assert_validate_fails(&ws, &["no schema"]);
}

#[test]
fn authorize_explains_an_allow() {
    let ws = Workspace::shipped();
    let out = authorize(&ws, USER_1, PRESIGN, USER_1_TEAM1, &["--context", PRESIGN_CONTEXT]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("ALLOW: allow decided by [presign-own-profile]"), "{}", out.stdout);
    assert!(
        out.stdout.contains("presign-own-profile  (") && out.stdout.contains("presign.cedar:13)"),
        "{}",
        out.stdout
    );
}

#[test]
fn authorize_names_the_forbid_that_denied_and_exits_3() {
    let ws = Workspace::shipped();
    let context = r#"{"sourceVpce": "vpce-0b2b000000000001b", "sourceIp": "10.1.2.3"}"#;
    let action = r#"Studio::Action::"CreatePresignedDomainUrl""#;
    let out = authorize(&ws, USER_1, action, USER_1_TEAM1, &["--context", context, "--json"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["effect"], "deny");
    assert_eq!(json["reason"], "forbidden");
    assert_eq!(json["policies"], serde_json::json!(["presign-only-through-lob-vpce"]));
    assert_eq!(json["errors"], serde_json::json!([]));
    assert!(json["snapshot"].as_str().is_some_and(|s| s.len() == 12));
}

#[test]
fn authorize_rejects_a_context_that_does_not_fit_the_schema() {
    let ws = Workspace::shipped();
    let out =
        authorize(&ws, USER_1, PRESIGN, USER_1_TEAM1, &["--context", r#"{"sourceVpce": "vpce-0a1a000000000001a"}"#]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("sourceIp"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn authorize_rejects_a_principal_of_the_wrong_type_for_the_action() {
    let ws = Workspace::shipped();
    let out = authorize(&ws, DZ_USER_1, PRESIGN, USER_1_TEAM1, &["--context", PRESIGN_CONTEXT]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("does not fit the schema"), "{}", out.stderr);
}

#[test]
fn authorize_lists_the_known_actions_for_an_unknown_one() {
    let ws = Workspace::shipped();
    let out = authorize(&ws, USER_1, "Fly", USER_1_TEAM1, &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no action named `Fly`"), "{}", out.stderr);
    assert!(out.stderr.contains(r#"DataZone::Action::"UseAccount""#), "{}", out.stderr);
}

#[test]
fn test_passes_the_shipped_tables_and_covers_every_policy() {
    let ws = Workspace::shipped();
    let out = ws.cli(&["test", "--require-coverage"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(" passed, 0 failed\n"), "{}", out.stdout);
    assert!(out.stdout.contains("coverage: each of the 13 policies"), "{}", out.stdout);
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
}

#[test]
fn test_fails_on_a_deliberately_wrong_expectation_and_shows_both_sides() {
    let ws = Workspace::shipped();
    let dir = tables(
        &ws,
        "wrong.yaml",
        r#"
defaults:
  principal: DataZone::User::"4b89ed84-9842-45dd-a2e5-15e49eda2b03"
  action: UseAccount
  resource: DataZone::Account::"333333333333"
  context: { regionName: us-east-1, domainIdentifier: dzd-4igt64u5j25ko9 }
cases:
  - name: quarantined account granted (wrong on purpose)
    expect: allow
  - name: right
    expect: deny
"#,
    );
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("FAIL  wrong.yaml: quarantined account granted (wrong on purpose)"), "{}", out.stdout);
    assert!(out.stdout.contains("expected: allow"), "{}", out.stdout);
    assert!(out.stdout.contains("got:      deny decided by [account-must-be-usable]"), "{}", out.stdout);
    assert!(out.stdout.contains("1 passed, 1 failed"), "{}", out.stdout);
}

#[test]
fn test_fails_when_the_deciding_policies_differ() {
    let ws = Workspace::shipped();
    let dir = tables(
        &ws,
        "t.json",
        r#"{"cases": [{"name": "right effect, wrong policy",
            "principal": "DataZone::User::\"4b89ed84-9842-45dd-a2e5-15e49eda2b03\"",
            "action": "DataZone::Action::\"UseAccount\"",
            "resource": "DataZone::Account::\"004878717744\"",
            "context": {"regionName": "us-west-2", "domainIdentifier": "dzd-4igt64u5j25ko9"},
            "expect": "deny", "policies": ["account-must-be-usable"]}]}"#,
    );
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("expected: deny decided by [account-must-be-usable]"), "{}", out.stdout);
    assert!(out.stdout.contains("got:      deny decided by [account-region-must-be-supported]"), "{}", out.stdout);
}

#[test]
fn test_require_coverage_fails_for_a_policy_no_case_exercises() {
    let ws = Workspace::shipped();
    ws.write_policy(
        "extra.cedar",
        "@id(\"untested\")\nforbid (principal, action == DataZone::Action::\"UseAccount\", resource)\n\
         when { context.regionName == \"ap-south-2\" };\n",
    );
    let out = ws.cli(&["test"]);
    assert_eq!(out.code, 0, "coverage is a warning by default: {}", out.stdout);
    assert!(out.stdout.contains("no passing case is decided by: untested"), "{}", out.stdout);
    let out = ws.cli(&["test", "--require-coverage"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
}

#[test]
fn test_reports_a_malformed_table_with_its_line() {
    let ws = Workspace::shipped();
    let dir = tables(&ws, "bad.yaml", "cases:\n  - name: x\n    expect: maybe\n");
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad.yaml:3:"), "{}", out.stderr);
    assert!(out.stderr.contains("maybe"), "{}", out.stderr);
}

#[test]
fn test_reports_a_case_that_does_not_fit_the_schema_as_an_error() {
    let ws = Workspace::shipped();
    let dir = tables(
        &ws,
        "bad-case.yaml",
        "cases:\n  - name: no region\n    principal: DataZone::User::\"u\"\n    action: UseAccount\n    \
         resource: DataZone::Account::\"004878717744\"\n    expect: deny\n",
    );
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "a case that cannot run fails, even when its expectation is deny");
    assert!(out.stdout.contains("ERROR bad-case.yaml: no region"), "{}", out.stdout);
    assert!(out.stdout.contains("regionName"), "{}", out.stdout);
}

#[test]
fn serve_check_config_accepts_the_embedded_default() {
    let ws = Workspace::shipped();
    let out = ws.cli(&["serve", "--check-config"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("configuration ok: embedded default (2 routes"), "{}", out.stdout);
}

#[test]
fn serve_check_config_names_what_is_wrong() {
    let ws = Workspace::shipped();
    let config = ws.dir.path().join("bad.toml");
    // a route whose context the action does not declare
    std::fs::write(
        &config,
        "[[routes]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/s/{u}\"\naction = 'Studio::Action::\"CreatePresignedDomainUrl\"'\n\
         resource_type = \"Studio::UserProfile\"\nresource_id = \"{u}\"\nhandler = \"echo\"\ncontext = { sourceIp = \"source_ip\", nonsense = \"method\" }\n",
    )
    .unwrap();
    let out = ws.cli(&["serve", "--check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("route `r`") && out.stderr.contains("nonsense"), "{}", out.stderr);

    std::fs::write(&config, "[server]\nlisten = \"not an address\"\n").unwrap();
    let out = ws.cli(&["serve", "--check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad.toml") && out.stderr.contains("listen"), "{}", out.stderr);

    let out = ws.cli(&["serve", "--check-config", "--config", "/nonexistent/authz.toml"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot read config file"), "{}", out.stderr);
}

#[test]
fn serve_check_config_refuses_broken_policies() {
    let ws = Workspace::shipped();
    ws.write_policy("broken.cedar", "@id(\"b\") permit (principal, action, resource) when { ; };\n");
    let out = ws.cli(&["serve", "--check-config"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("broken.cedar:1:"), "{}", out.stderr);
}

#[test]
fn the_dev_issuer_refuses_non_loopback_addresses() {
    let ws = Workspace::shipped();
    let out = ws.cli(&["serve", "--dev", "--check-config", "--listen", "0.0.0.0:8080"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("only runs on loopback"), "{}", out.stderr);
}

/// The shipped tables in the `cedar` CLI's `run-tests` format, written by `--export`.
fn exported(ws: &Workspace) -> Vec<Value> {
    let path = ws.dir.path().join("exported.json");
    let out = ws.cli(&["test", "--export", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn exported_tables_are_cedar_tests_that_pass_as_the_tables_do() {
    let ws = Workspace::shipped();
    let tests = exported(&ws);
    let tables = ws.cli(&["test"]);
    assert_eq!(tables.code, 0, "{tables:?}");
    let passed = tables.stdout.lines().find(|l| l.ends_with("0 failed")).unwrap().to_owned();
    assert_eq!(passed, format!("{} passed, 0 failed", tests.len()), "every case exported");

    let find = |name: &str| tests.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name}"));
    let own = find("presign: user-1 opens their Team1 profile");
    assert_eq!(own["request"]["action"], r#"Studio::Action::"CreatePresignedDomainUrl""#, "the action in full");
    // extension values written out: the `cedar` CLI reads the tests without a schema
    let ip = |ip: &str| json!({"__extn": {"fn": "ip", "arg": ip}});
    assert_eq!(own["request"]["context"], json!({"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": ip("10.1.2.3")}));
    assert_eq!((own["decision"].clone(), own["reason"].clone()), (json!("allow"), json!(["presign-own-profile"])));
    assert_eq!(own["num_errors"], 0);
    let stored = own["entities"].as_array().unwrap();
    assert!(stored.iter().any(|e| e["uid"] == json!({"type": "Studio::User", "id": "user-2"})), "the whole store");
    // a default removed by `null`, and a case's entity laid over the stored one
    let no_endpoint = find("presign: VPC endpoint - a call through no endpoint is refused");
    assert_eq!(no_endpoint["request"]["context"], json!({"sourceIp": ip("10.1.2.3")}));
    assert_eq!(no_endpoint["decision"], "deny");
    let moved = find("presign: LOB matters - user-1 moved to lob-b cannot open a lob-a profile");
    let users: Vec<&Value> = moved["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["uid"] == json!({"type": "Studio::User", "id": "user-1"}))
        .collect();
    assert_eq!(users.len(), 1, "the case's user-1 replaces the stored one");
    assert!(users[0]["parents"].to_string().contains("lob-b"), "{}", users[0]);

    // the exported file, run as a suite of its own, passes case for case
    let dir = ws.dir.path().join("cedar-tests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tests.json"), serde_json::to_string(&tests).unwrap()).unwrap();
    let run = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&passed), "{}", run.stdout);

    // `-` writes to standard output
    let out = ws.cli(&["test", "--export", "-"]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out.stdout).unwrap().len(), tests.len());
}

#[test]
fn cedar_tests_decide_over_their_own_entities_with_reason_as_a_subset_and_errors_exact() {
    let ws = Workspace::shipped();
    let base = exported(&ws).into_iter().find(|t| t["name"] == "presign: user-1 opens their Team1 profile").unwrap();
    let variant = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut test = base.clone();
        test["name"] = json!(name);
        change(&mut test);
        test
    };
    let suite = json!([
        variant("as exported", &|_| {}),
        variant("no reason asked", &|t| t["reason"] = json!([])),
        variant("user-1 in no group of this store is denied", &|t| {
            for entity in t["entities"].as_array_mut().unwrap() {
                if entity["uid"] == json!({"type": "Studio::User", "id": "user-1"}) {
                    entity["parents"] = json!([]);
                }
            }
            t["decision"] = json!("deny");
            t["reason"] = json!([]);
        }),
        variant("fails: a store without the profile", &|t| t["entities"] = json!([])),
        variant("fails: a policy that did not decide", &|t| t["reason"] = json!(["presign-own-profile", "nope"])),
        variant("fails: errors expected", &|t| t["num_errors"] = json!(1)),
        variant("fails: a bad principal", &|t| t["request"]["principal"] = json!("user-1")),
    ]);
    let mut unnamed = base.clone();
    unnamed.as_object_mut().unwrap().remove("name");
    unnamed["decision"] = json!("deny");
    let mut suite = suite.as_array().unwrap().clone();
    suite.push(unnamed);
    let dir = ws.dir.path().join("cedar-tests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("suite.json"), serde_json::to_string(&suite).unwrap()).unwrap();
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("3 passed, 5 failed"), "{}", out.stdout);
    for failing in [
        "FAIL  suite.json: fails: a store without the profile",
        "FAIL  suite.json: fails: a policy that did not decide",
        "FAIL  suite.json: fails: errors expected",
        "ERROR suite.json: fails: a bad principal",
        "FAIL  suite.json: (unnamed test #8)",
    ] {
        assert!(out.stdout.contains(failing), "{failing}:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("expected: allow with [presign-own-profile, nope] among the deciding policies"));

    // not a list of tests: the file and place are named
    std::fs::write(dir.join("suite.json"), r#"[{"request": {}}]"#).unwrap();
    let out = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("suite.json:1:") && out.stderr.contains("not a list of `cedar run-tests` tests"));
}

/// The `cedar` CLI `scripts/test-tools.sh` installs (the Cedar version of Cargo.lock).
fn cedar_cli() -> PathBuf {
    let tools = std::env::var_os("AUTHZ_TEST_TOOLS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/authz-sidecar/tools"),
        PathBuf::from,
    );
    let path = tools.join("bin/cedar");
    assert!(path.exists(), "{} is missing: run `bash scripts/test-tools.sh` (scripts/check.sh does)", path.display());
    path
}

#[test]
fn exported_tables_pass_the_cedar_clis_run_tests_and_fail_where_ours_fail() {
    let ws = Workspace::shipped();
    let mut tests = exported(&ws);
    // one flipped expectation must fail in both tools
    let flipped = tests.iter_mut().find(|t| t["name"] == "presign: user-1 opens their Team1 profile").unwrap();
    flipped["decision"] = json!("deny");
    flipped["reason"] = json!([]);
    let dir = ws.dir.path().join("cedar-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tests.json");
    std::fs::write(&file, serde_json::to_string(&tests).unwrap()).unwrap();
    let mut policies = String::new();
    for entry in std::fs::read_dir(ws.policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            policies.push_str(&std::fs::read_to_string(path).unwrap());
            policies.push('\n');
        }
    }
    let all = ws.dir.path().join("all.cedar");
    std::fs::write(&all, policies).unwrap();

    let cedar = std::process::Command::new(cedar_cli())
        .args(["run-tests", "--policies", all.to_str().unwrap(), "--tests", file.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&cedar.stdout);
    assert!(!cedar.status.success(), "{printed}");
    let total = tests.len();
    assert!(printed.contains(&format!("results: {} passed, 1 failed", total - 1)), "{printed}");
    assert!(printed.contains("test presign: user-1 opens their Team1 profile ... fail"), "{printed}");

    let ours = ws.cli(&["test", dir.to_str().unwrap()]);
    assert_eq!(ours.code, 1, "{ours:?}");
    assert!(ours.stdout.contains(&format!("{} passed, 1 failed", total - 1)), "{}", ours.stdout);
    assert!(ours.stdout.contains("FAIL  tests.json: presign: user-1 opens their Team1 profile"), "{}", ours.stdout);
}
