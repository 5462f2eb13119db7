//! The clean-up after a removal against the SDK's mock SageMaker client: every page of
//! apps, only the running ones deleted, a wait that ends (or does not), a call that
//! fails once, and a profile already gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authz_sidecar::lifecycle::cleanup::{Cleaned, CleanupError, CleanupOptions, remove_profile};
use aws_sdk_sagemaker::operation::delete_app::{DeleteAppError, DeleteAppOutput};
use aws_sdk_sagemaker::operation::delete_user_profile::{DeleteUserProfileError, DeleteUserProfileOutput};
use aws_sdk_sagemaker::operation::list_apps::ListAppsOutput;
use aws_sdk_sagemaker::types::{AppDetails, AppStatus, AppType};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;

const DOMAIN: &str = "d-lobaexample01";
const PROFILE: &str = "user-1-team1";

fn quick() -> CleanupOptions {
    CleanupOptions {
        wait: Duration::from_millis(300),
        first_poll: Duration::from_millis(10),
        max_poll: Duration::from_millis(40),
        attempts: 3,
        retry_pause: Duration::from_millis(5),
    }
}

fn app(app_type: AppType, name: &str, status: AppStatus) -> AppDetails {
    AppDetails::builder()
        .domain_id(DOMAIN)
        .user_profile_name(PROFILE)
        .app_type(app_type)
        .app_name(name)
        .status(status)
        .build()
}

/// ListApps answering from `pages` (the last one repeated as apps change): each call
/// returns the page its `NextToken` names, with the apps' status as `status` says now.
fn list_apps(pages: Vec<Vec<(AppType, &'static str)>>, status: Arc<dyn Fn(&str) -> AppStatus + Send + Sync>) -> Rule {
    mock!(aws_sdk_sagemaker::Client::list_apps)
        .match_requests(|input| {
            input.domain_id_equals() == Some(DOMAIN) && input.user_profile_name_equals() == Some(PROFILE)
        })
        .then_compute_output(move |input| {
            let page: usize = input.next_token().map_or(0, |t| t.parse().unwrap());
            let apps = pages[page].iter().map(|(t, name)| app(t.clone(), name, status(name))).collect();
            let mut output = ListAppsOutput::builder().set_apps(Some(apps));
            if page + 1 < pages.len() {
                output = output.next_token((page + 1).to_string());
            }
            output.build()
        })
}

fn client(rules: &[&Rule]) -> aws_sdk_sagemaker::Client {
    mock_client!(aws_sdk_sagemaker, RuleMode::MatchAny, rules)
}

#[tokio::test]
async fn every_page_is_read_only_running_apps_are_deleted_and_the_profile_goes_last() {
    // two pages: a running JupyterServer and KernelGateway, and two apps already done
    let deleted: Arc<Mutex<Vec<String>>> = Arc::default();
    let gone = deleted.clone();
    let status: Arc<dyn Fn(&str) -> AppStatus + Send + Sync> = Arc::new(move |name: &str| match name {
        "old" => AppStatus::Deleted,
        "broken" => AppStatus::Failed,
        name if gone.lock().unwrap().iter().any(|d| d == name) => AppStatus::Deleted,
        _ => AppStatus::InService,
    });
    let list = list_apps(
        vec![
            vec![(AppType::JupyterServer, "default"), (AppType::KernelGateway, "datascience-ml-t3-medium")],
            vec![(AppType::JupyterServer, "old"), (AppType::KernelGateway, "broken")],
        ],
        status,
    );
    let record = deleted.clone();
    let delete_app = mock!(aws_sdk_sagemaker::Client::delete_app).then_compute_output(move |input| {
        assert_eq!((input.domain_id(), input.user_profile_name()), (Some(DOMAIN), Some(PROFILE)));
        assert!(input.app_type().is_some());
        record.lock().unwrap().push(input.app_name().unwrap().to_owned());
        DeleteAppOutput::builder().build()
    });
    let apps_left = deleted.clone();
    let delete_profile = mock!(aws_sdk_sagemaker::Client::delete_user_profile).then_compute_output(move |input| {
        assert_eq!(input.user_profile_name(), Some(PROFILE));
        assert_eq!(apps_left.lock().unwrap().len(), 2, "the profile goes after its apps");
        DeleteUserProfileOutput::builder().build()
    });
    let client = client(&[&list, &delete_app, &delete_profile]);

    let cleaned = remove_profile(&client, DOMAIN, PROFILE, &quick()).await.unwrap();
    assert_eq!(cleaned, Cleaned { apps_deleted: 2, profile_deleted: true });
    let mut names = deleted.lock().unwrap().clone();
    names.sort();
    assert_eq!(names, ["datascience-ml-t3-medium", "default"], "never the Deleted or Failed ones");
    assert!(list.num_calls() >= 4, "both pages, then both pages again while waiting: {}", list.num_calls());
    assert_eq!(delete_profile.num_calls(), 1);
}

#[tokio::test]
async fn an_app_stuck_deleting_fails_the_clean_up_and_the_profile_stays() {
    let list = list_apps(vec![vec![(AppType::JupyterLab, "stuck")]], Arc::new(|_: &str| AppStatus::Deleting));
    let delete_app = mock!(aws_sdk_sagemaker::Client::delete_app).then_output(|| DeleteAppOutput::builder().build());
    let delete_profile = mock!(aws_sdk_sagemaker::Client::delete_user_profile)
        .then_output(|| DeleteUserProfileOutput::builder().build());
    let client = client(&[&list, &delete_app, &delete_profile]);

    let started = std::time::Instant::now();
    let error = remove_profile(&client, DOMAIN, PROFILE, &quick()).await.unwrap_err();
    assert!(matches!(&error, CleanupError::StillRunning { apps, .. } if apps.contains("stuck (Deleting)")), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "bounded by the wait: {:?}", started.elapsed());
    assert_eq!(delete_app.num_calls(), 0, "an app already deleting is not deleted again");
    assert_eq!(delete_profile.num_calls(), 0, "the profile stays while an app runs");
}

#[tokio::test]
async fn a_delete_that_fails_once_is_tried_again() {
    let deleted = Arc::new(AtomicUsize::new(0));
    let done = deleted.clone();
    let list = list_apps(
        vec![vec![(AppType::JupyterServer, "default")]],
        Arc::new(
            move |_: &str| if done.load(Ordering::SeqCst) > 0 { AppStatus::Deleted } else { AppStatus::InService },
        ),
    );
    let counted = deleted.clone();
    let delete_app = mock!(aws_sdk_sagemaker::Client::delete_app)
        .sequence()
        .error(|| {
            DeleteAppError::generic(ErrorMetadata::builder().code("ServiceUnavailable").message("try again").build())
        })
        .output(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            DeleteAppOutput::builder().build()
        })
        .build();
    let delete_profile = mock!(aws_sdk_sagemaker::Client::delete_user_profile)
        .then_output(|| DeleteUserProfileOutput::builder().build());
    let client = client(&[&list, &delete_app, &delete_profile]);

    let cleaned = remove_profile(&client, DOMAIN, PROFILE, &quick()).await.unwrap();
    assert_eq!(cleaned, Cleaned { apps_deleted: 1, profile_deleted: true });
    assert_eq!(delete_app.num_calls(), 2);
}

#[tokio::test]
async fn a_profile_already_gone_is_a_clean_up_done() {
    let list = list_apps(vec![vec![]], Arc::new(|_: &str| AppStatus::Deleted));
    let delete_profile = mock!(aws_sdk_sagemaker::Client::delete_user_profile).then_error(|| {
        DeleteUserProfileError::ResourceNotFound(
            aws_sdk_sagemaker::types::error::ResourceNotFound::builder().message("no such profile").build(),
        )
    });
    let client = client(&[&list, &delete_profile]);
    let cleaned = remove_profile(&client, DOMAIN, PROFILE, &quick()).await.unwrap();
    assert_eq!(cleaned, Cleaned { apps_deleted: 0, profile_deleted: false });

    // and a failure that persists is an error after three tries, naming the call
    let denied = mock!(aws_sdk_sagemaker::Client::delete_user_profile)
        .then_error(|| DeleteUserProfileError::generic(ErrorMetadata::builder().code("AccessDeniedException").build()));
    let client = self::client(&[&list, &denied]);
    let error = remove_profile(&client, DOMAIN, PROFILE, &quick()).await.unwrap_err();
    assert!(error.to_string().contains("DeleteUserProfile") && error.to_string().contains("AccessDenied"), "{error}");
    assert_eq!(denied.num_calls(), 3);
}
