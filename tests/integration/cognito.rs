//! Real Cognito-shaped tokens from a local Cognito emulator (moto's server, installed by
//! `scripts/test-tools.sh`): a user pool, an app client, groups and users created there,
//! tokens obtained there with AdminInitiateAuth, decisions made here.
//!
//! Like real Cognito, moto's tokens name the public Cognito URL as `iss` while its JWKS
//! is served on loopback, so the issuer and the JWKS URL are configured separately.

use authz_sidecar::config::Config;
use serde_json::{Value, json};

use crate::harness::{self, Moto, start_moto};
use crate::support::Workspace;

/// One Cognito API call (AWS JSON 1.1; moto does not check signatures).
async fn cognito(moto: &Moto, operation: &str, body: Value) -> Value {
    harness::moto_json(moto, "cognito-idp", "AWSCognitoIdentityProviderService", operation, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_cognito_user_pool_drive_the_decisions() {
    let moto = start_moto().await;
    let pool = cognito(&moto, "CreateUserPool", json!({"PoolName": "studio-users"})).await;
    let pool_id = pool["UserPool"]["Id"].as_str().unwrap().to_owned();
    let client = cognito(
        &moto,
        "CreateUserPoolClient",
        json!({"UserPoolId": pool_id, "ClientName": "studio-api", "ExplicitAuthFlows": ["ADMIN_NO_SRP_AUTH"]}),
    )
    .await;
    let client_id = client["UserPoolClient"]["ClientId"].as_str().unwrap().to_owned();
    for group in ["Team1", "Team2"] {
        cognito(&moto, "CreateGroup", json!({"UserPoolId": pool_id, "GroupName": group})).await;
    }
    for (user, groups) in [("user-1", vec!["Team1", "Team2"]), ("user-2", vec!["Team2"])] {
        cognito(
            &moto,
            "AdminCreateUser",
            json!({"UserPoolId": pool_id, "Username": user, "TemporaryPassword": "Temp-Passw0rd!", "MessageAction": "SUPPRESS"}),
        )
        .await;
        cognito(
            &moto,
            "AdminSetUserPassword",
            json!({"UserPoolId": pool_id, "Username": user, "Password": "Real-Passw0rd!", "Permanent": true}),
        )
        .await;
        for group in groups {
            cognito(&moto, "AdminAddUserToGroup", json!({"UserPoolId": pool_id, "Username": user, "GroupName": group}))
                .await;
        }
    }
    let login = |user: &'static str| {
        let (pool_id, client_id) = (pool_id.clone(), client_id.clone());
        let moto = &moto;
        async move {
            let auth = cognito(
                moto,
                "AdminInitiateAuth",
                json!({"UserPoolId": pool_id, "ClientId": client_id, "AuthFlow": "ADMIN_NO_SRP_AUTH",
                       "AuthParameters": {"USERNAME": user, "PASSWORD": "Real-Passw0rd!"}}),
            )
            .await;
            let result = &auth["AuthenticationResult"];
            (result["AccessToken"].as_str().unwrap().to_owned(), result["IdToken"].as_str().unwrap().to_owned())
        }
    };
    let (user1_access, user1_id) = login("user-1").await;
    let (user2_access, _) = login("user-2").await;

    // The sidecar, trusting this pool.
    let ws = Workspace::shipped();
    let issuer = format!("https://cognito-idp.us-east-1.amazonaws.com/{pool_id}");
    let jwks = format!("http://127.0.0.1:{}/{pool_id}/.well-known/jwks.json", moto.port);
    let toml = format!(
        "{base}audiences = [\"{client_id}\"]\ntoken_use = \"access\"\n\
         [[routes]]\nname = \"studio\"\nmethod = \"GET\"\nhandler = \"echo\"\n{route}\n",
        base = harness::base_toml(&ws, &issuer, &jwks),
        route = harness::STUDIO_ROUTE,
    );
    let sidecar = harness::launch(Config::from_toml(&toml, "cognito test").unwrap()).await;
    harness::wait_ready(sidecar.admin, &sidecar.app).await;
    let data_addr = sidecar.data;

    let call = |token: String, path: &'static str, vpce: &'static str| async move {
        let auth = format!("Bearer {token}");
        let (status, _, body) = harness::get(
            data_addr,
            path,
            &[("authorization", &auth), ("x-amzn-vpce-id", vpce), ("x-forwarded-for", "10.1.2.3")],
        )
        .await;
        (status, body)
    };
    let lob_a = "vpce-0a1a000000000001a";
    let lob_b = "vpce-0b2b000000000001b";
    let (status, body) = call(user1_access.clone(), "/studio/user-1/team1", lob_a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"principal\":\"Studio::User::\\\"user-1\\\"\""), "{body}");
    assert_eq!(call(user1_access.clone(), "/studio/user-1/team2", lob_a).await.0, 200, "user-1's other team");
    assert_eq!(call(user2_access.clone(), "/studio/user-2/team2", lob_b).await.0, 200);
    assert_eq!(call(user2_access.clone(), "/studio/user-1/team1", lob_a).await.0, 403, "not user-2's profile");
    assert_eq!(call(user1_access, "/studio/user-1/team1", lob_b).await.0, 403, "wrong endpoint for lob-a");
    assert_eq!(call(user1_id, "/studio/user-1/team1", lob_a).await.0, 401, "an id token is not an access token");
    sidecar.shutdown.cancel();
}
