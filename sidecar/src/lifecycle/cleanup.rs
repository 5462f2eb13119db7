//! Cleaning up after a removal: a user who left a team loses their Studio profile for
//! it, in this order, each step idempotent:
//!
//! 1. list the profile's apps (`ListApps` with `DomainIdEquals` and
//!    `UserProfileNameEquals`, every page);
//! 2. delete each one that is not already `Deleted`, `Failed` or `Deleting`
//!    (`DeleteApp`; an app already gone is fine);
//! 3. wait, polling with a growing interval up to a bound, until none is left running
//!    (`Deleting` still counts as running);
//! 4. delete the profile (`DeleteUserProfile`; a profile already gone is fine).
//!
//! A call that fails is tried again (three times, with a growing pause) before the
//! clean-up fails; a failed clean-up is an error the event's sender delivers again,
//! and a second run does what is left. Each step is one log line (target
//! `authz_sidecar::lifecycle`, with `step`, `domain`, `profile`).
//!
//! The user's home directory on the domain's EFS volume is left alone: the sidecar
//! never calls EFS, and `DeleteUserProfile` does not delete it.

use std::time::Duration;

use aws_sdk_sagemaker::Client;
use aws_sdk_sagemaker::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemaker::types::{AppDetails, AppStatus};

/// How long and how often a clean-up waits and tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// The longest the apps may take to stop.
    pub wait: Duration,
    /// The first pause between two looks at the apps (doubling up to `max_poll`).
    pub first_poll: Duration,
    pub max_poll: Duration,
    /// Tries of each call before the clean-up fails.
    pub attempts: u32,
    /// The pause after the first failed try (doubling).
    pub retry_pause: Duration,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(300),
            first_poll: Duration::from_secs(5),
            max_poll: Duration::from_secs(30),
            attempts: 3,
            retry_pause: Duration::from_secs(1),
        }
    }
}

/// What a clean-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Apps this run asked SageMaker to delete.
    pub apps_deleted: usize,
    /// Whether this run deleted the profile (false: it was already gone).
    pub profile_deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CleanupError {
    #[error("SageMaker {call} failed for profile `{profile}`: {code}")]
    Call { call: &'static str, profile: String, code: String },
    #[error("apps of profile `{profile}` were still running after {waited:?}: {apps}")]
    StillRunning { profile: String, waited: Duration, apps: String },
}

/// Remove `profile` of `domain` and its apps (see the module's steps).
pub async fn remove_profile(
    client: &Client,
    domain: &str,
    profile: &str,
    options: &CleanupOptions,
) -> Result<Cleaned, CleanupError> {
    let mut cleaned = Cleaned::default();
    let apps = retried(options, || live_apps(client, domain, profile)).await?;
    step("apps_listed", domain, profile, &format!("{} running", apps.len()));
    for app in apps.iter().filter(|a| a.status() != Some(&AppStatus::Deleting)) {
        let name = app.app_name().unwrap_or_default();
        let deleted = retried(options, || delete_app(client, domain, profile, app)).await?;
        if deleted {
            cleaned.apps_deleted += 1;
        }
        step("app_deleted", domain, profile, &format!("{} {name}", app.app_type().map_or("?", |t| t.as_str())));
    }
    wait_stopped(client, domain, profile, options).await?;
    cleaned.profile_deleted = retried(options, || delete_profile(client, domain, profile)).await?;
    step("profile_deleted", domain, profile, if cleaned.profile_deleted { "deleted" } else { "already gone" });
    Ok(cleaned)
}

/// The profile's apps that are not `Deleted` or `Failed`, every page.
async fn live_apps(client: &Client, domain: &str, profile: &str) -> Result<Vec<AppDetails>, CleanupError> {
    let mut pages =
        client.list_apps().domain_id_equals(domain).user_profile_name_equals(profile).into_paginator().items().send();
    let mut live = Vec::new();
    while let Some(app) = pages.next().await {
        let app = app.map_err(|e| call_error("ListApps", profile, &e))?;
        if !matches!(app.status(), Some(AppStatus::Deleted | AppStatus::Failed)) {
            live.push(app);
        }
    }
    Ok(live)
}

/// Whether this call deleted `app` (false: it was already gone).
async fn delete_app(client: &Client, domain: &str, profile: &str, app: &AppDetails) -> Result<bool, CleanupError> {
    let mut call = client.delete_app().domain_id(domain).user_profile_name(profile);
    if let Some(app_type) = app.app_type() {
        call = call.app_type(app_type.clone());
    }
    if let Some(name) = app.app_name() {
        call = call.app_name(name);
    }
    match call.send().await {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found() => Ok(false),
        Err(e) => Err(call_error("DeleteApp", profile, &e)),
    }
}

/// Whether this call deleted the profile (false: it was already gone).
async fn delete_profile(client: &Client, domain: &str, profile: &str) -> Result<bool, CleanupError> {
    match client.delete_user_profile().domain_id(domain).user_profile_name(profile).send().await {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found() => Ok(false),
        Err(e) => Err(call_error("DeleteUserProfile", profile, &e)),
    }
}

/// Poll until none of the profile's apps is running, within `options.wait`.
async fn wait_stopped(
    client: &Client,
    domain: &str,
    profile: &str,
    options: &CleanupOptions,
) -> Result<(), CleanupError> {
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut pause = options.first_poll;
    loop {
        let running = retried(options, || live_apps(client, domain, profile)).await?;
        if running.is_empty() {
            step("apps_stopped", domain, profile, "none running");
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            let apps: Vec<String> = running
                .iter()
                .map(|a| format!("{} ({})", a.app_name().unwrap_or("?"), a.status().map_or("?", |s| s.as_str())))
                .collect();
            step("apps_stopped", domain, profile, "timed out");
            return Err(CleanupError::StillRunning {
                profile: profile.to_owned(),
                waited: options.wait,
                apps: apps.join(", "),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(options.max_poll);
    }
}

/// `call`, tried up to `options.attempts` times with a doubling pause.
async fn retried<T, F, Fut>(options: &CleanupOptions, mut call: F) -> Result<T, CleanupError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CleanupError>>,
{
    let mut pause = options.retry_pause;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt < options.attempts => {
                tracing::warn!(target: "authz_sidecar::lifecycle", %error, attempt, "clean-up call failed; trying again");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

fn step(step: &'static str, domain: &str, profile: &str, outcome: &str) {
    tracing::info!(target: "authz_sidecar::lifecycle", step, domain, profile, outcome, "clean-up step");
    metrics::counter!("authz_cleanup_steps_total", "step" => step).increment(1);
}

fn call_error<E, R>(call: &'static str, profile: &str, error: &SdkError<E, R>) -> CleanupError
where
    E: ProvideErrorMetadata,
{
    let code = error.code().unwrap_or("no answer (unreachable, timed out, or no credentials)").to_owned();
    CleanupError::Call { call, profile: profile.to_owned(), code }
}
