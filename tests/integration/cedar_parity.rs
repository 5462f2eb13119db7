//! The data plane decides as Cedar does where the sidecar builds what Cedar does not
//! need: a principal no entity file knows, of a type with required attributes; and
//! routes are checked against the schema without inventing entity ids.

use authz_sidecar::policy_store::PolicyStore;

use crate::harness::{Setup, Sidecar, config_toml, launch, token};
use crate::support::Workspace;

/// The shipped files with `Studio::User.email` required, and a permit for Team1 members
/// on user-1's Team1 profile that does not care who owns it.
fn required_email() -> Workspace {
    let ws = Workspace::shipped();
    let schema = ws.policies().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap().replace("\"email\"?: String", "\"email\": String");
    assert!(text.contains("\"email\": String"));
    std::fs::write(&schema, text).unwrap();
    ws.write_policy(
        "team1-readers.cedar",
        r#"@id("team1-may-open-user-1-team1")
permit (principal in Studio::Team::"Team1", action == Studio::Action::"CreatePresignedDomainUrl", resource)
when { resource == Studio::UserProfile::"user-1-team1" || resource == Studio::UserProfile::"user-1-team2" };
@id("mail-domain-matters")
forbid (principal, action == Studio::Action::"CreatePresignedDomainUrl", resource == Studio::UserProfile::"user-1-team2")
unless { principal.email like "*@example.com" };
"#,
    );
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_of_a_type_with_required_attributes_is_decided_as_cedar_decides() {
    let ws = required_email();
    let jwks = crate::harness::Jwks::start(&[&crate::harness::keys().0]).await;
    let upstream = crate::harness::TestServer::start(|_| (200, "ok".to_owned(), std::time::Duration::ZERO)).await;
    let toml = config_toml(&ws, &jwks.url(), &upstream.url(), &Setup::default());
    let launched = launch(authz_sidecar::config::Config::from_toml(&toml, "t").unwrap()).await;
    let sidecar = Sidecar::from_parts(launched, ws, jwks, upstream).ready().await;
    // user-9 has no stored entity (so no email); its token's Team1 still counts
    let (status, body) = sidecar.studio("/studio/user-1/team1", &token("user-9", &["Team1"])).await;
    assert_eq!(status, 200, "{body}");
    // a policy that reads the missing attribute errors, and an error denies (the permit
    // above would allow it otherwise)
    let (status, body) = sidecar.studio("/studio/user-1/team2", &token("user-9", &["Team1", "Team2"])).await;
    assert_eq!(status, 403, "{body}");
    let (_, _, metrics) = crate::harness::get(sidecar.admin, "/metrics", &[]).await;
    assert!(metrics.contains("reason=\"evaluation_error\""), "{metrics}");
    // a stored user is checked against the schema as before
    assert_eq!(sidecar.studio("/studio/user-1/team1", &token("user-1", &["Team1"])).await.0, 200);
}

#[test]
fn routes_on_enumerated_entity_types_check_without_invented_ids() {
    let ws = Workspace::shipped();
    let schema = ws.policies().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap().replacen(
        "namespace Studio {",
        "namespace Studio {\n  entity Report enum [\"daily\", \"weekly\"];\n  \
         action ReadReport appliesTo { principal: [User], resource: [Report], context: {} };\n",
        1,
    );
    std::fs::write(&schema, text).unwrap();
    let store = PolicyStore::load_files(&ws.dirs()).unwrap();
    let route = |resource_type: &str, action: &str| {
        format!(
            "[policies]\ndir = \"{}\"\nentities = \"{}\"\n[[routes]]\nname = \"report\"\nmethod = \"GET\"\n\
             path = \"/reports/{{kind}}\"\naction = '{action}'\nresource_type = \"{resource_type}\"\n\
             resource_id = \"{{kind}}\"\ncontext = {{}}\nhandler = \"echo\"\n",
            ws.policies().display(),
            ws.entities().display(),
        )
    };
    let config =
        authz_sidecar::config::Config::from_toml(&route("Studio::Report", r#"Studio::Action::"ReadReport""#), "t")
            .unwrap();
    assert_eq!(authz_sidecar::app::check_routes(&config, &store.current().unwrap()), Vec::<String>::new());
    // and what does not fit is still named
    let config =
        authz_sidecar::config::Config::from_toml(&route("Studio::Lob", r#"Studio::Action::"ReadReport""#), "t")
            .unwrap();
    let problems = authz_sidecar::app::check_routes(&config, &store.current().unwrap());
    assert!(problems.iter().any(|p| p.contains("does not apply to resources of type `Studio::Lob`")), "{problems:?}");
    let config =
        authz_sidecar::config::Config::from_toml(&route("Studio::Report", r#"Studio::Action::"Nope""#), "t").unwrap();
    let problems = authz_sidecar::app::check_routes(&config, &store.current().unwrap());
    assert!(problems.iter().any(|p| p.contains("is not in the policy schema")), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_be_asked_is_denied_and_labelled_by_its_kind() {
    let sidecar = Sidecar::start(Setup::default()).await.ready().await;
    // a groups claim of numbers: the Team tag would be a set of numbers, which the
    // schema does not allow
    let mut claims = crate::harness::claims("user-1", &[]);
    claims["cognito:groups"] = serde_json::json!([1, 2]);
    let bad = crate::harness::sign(&crate::harness::keys().0, &claims);
    let (status, body) = sidecar.studio("/studio/user-1/team1", &bad).await;
    assert_eq!(status, 403, "{body}");
    let (_, _, metrics) = crate::harness::get(sidecar.admin, "/metrics", &[]).await;
    assert!(
        metrics.contains(r#"authz_decisions_total{route="studio",decision="deny",reason="bad_entities"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_files_that_do_not_fit_the_routes_are_not_served_and_readyz_says_why() {
    let ws = Workspace::shipped();
    let jwks = crate::harness::Jwks::start(&[&crate::harness::keys().0]).await;
    let toml = crate::harness::base_toml(&ws, crate::harness::ISSUER, &jwks.url())
        + "[[routes]]\nname = \"r\"\nmethod = \"GET\"\npath = \"/r/{id}\"\naction = 'Studio::Action::\"Missing\"'\n\
           resource_type = \"Studio::UserProfile\"\nresource_id = \"{id}\"\nhandler = \"echo\"\n";
    let launched = launch(authz_sidecar::config::Config::from_toml(&toml, "t").unwrap()).await;
    let mut said = String::new();
    for _ in 0..100 {
        let (status, _, body) = crate::harness::get(launched.admin, "/readyz", &[]).await;
        assert_eq!(status, 503, "{body}");
        if body.contains("does not fit the routes") {
            said = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(said.contains("Missing"), "{said}");
    let (status, _, _) = crate::harness::get(launched.data, "/r/x", &[]).await;
    assert_eq!(status, 503, "nothing is served from a snapshot that does not fit");
    launched.shutdown.cancel();
}
