//! `authz-sidecar lambda`: the account-pool handler, and the group-membership events of
//! IAM Identity Center, as an AWS Lambda function.
//!
//! DataZone registers a Lambda ARN as the custom account-pool handler. This command is
//! that function's entry point (package the binary as `bootstrap` with the policies and
//! entities next to it): it loads the snapshot once, then answers each invocation with
//! the same `parse` and `apply` as the HTTP route, so both forms give the same bytes. A
//! malformed event is an error result, never a GRANT.
//!
//! With `--config` (or `AUTHZ_SIDECAR_CONFIG`, which is how the packaged `bootstrap`,
//! run with no arguments, is given one), the file's `[directory]` (and `[aws]`) are
//! used as `serve` uses them:
//! a DataZone user no entity file lists is read from the directory's table. A user the
//! directory cannot answer for is an error result (`DirectoryUnavailable`, or
//! `UserNotReadable` for an item that does not fit the schema), never a GRANT.
//!
//! With a `[lifecycle]` in that file, the function also takes the CloudTrail
//! group-membership events an EventBridge rule sends it (told apart by their
//! `detail-type` and `eventSource`), and applies them with the same
//! [`Lifecycle::handle_value`] as the `membership_events` route; an EventBridge
//! schedule (`detail-type: "Scheduled Event"`) synchronises memberships
//! ([`Lifecycle::sync`]). Such an event without
//! `[lifecycle]` is an error result (`LifecycleNotConfigured`), and so is one that
//! cannot be applied (its `errorType` from [`crate::lifecycle::LifecycleError`]), so
//! that EventBridge delivers it again.

use std::io::Write;
use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::Value;

use super::{CONFIG_VARIABLE, Sources, exit};
use crate::directory::Directory;
use crate::handlers::account_pool::{AccountPool, EventError, UserError, directory_entities, parse};
use crate::lifecycle::event::is_schedule;
use crate::lifecycle::{Lifecycle, is_membership_source};
use crate::policy_store::PolicySnapshot;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    sources: Sources,
    /// A sidecar configuration whose `[directory]`, `[lifecycle]` and `[aws]` to use
    /// (other sections are checked and ignored: policies and entities come from the
    /// options above).
    #[arg(long, value_name = "FILE", env = CONFIG_VARIABLE)]
    config: Option<std::path::PathBuf>,
}

/// What the Lambda runtime sets; the runtime crate panics without them.
const LAMBDA_ENVIRONMENT: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

pub(super) fn run(args: &Args, _out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if let Some(missing) = LAMBDA_ENVIRONMENT.iter().find(|var| std::env::var_os(var).is_none()) {
        let _ = writeln!(err, "error: not running in AWS Lambda: `{missing}` is not set (use `serve` outside Lambda)");
        return exit::FAILURE;
    }
    let snapshot = match args.sources.load(err) {
        Ok(snapshot) => Arc::new(snapshot),
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    let (directory, lifecycle) = match &args.config {
        Some(path) => {
            let config = match crate::config::Config::load(Some(path)) {
                Ok(config) => config,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    return exit::FAILURE;
                }
            };
            if config.records.is_some() {
                // a function's file system is its own and short-lived: nothing would read them
                tracing::warn!("[records] applies to `serve` only: the Lambda form writes no decision records");
            }
            let built = runtime.block_on(async {
                Ok::<_, crate::app::StartError>((
                    crate::app::aws_directory(&config).await?.map(Arc::new),
                    crate::app::aws_lifecycle(&config, None).await?.map(|(lifecycle, _)| Arc::new(lifecycle)),
                ))
            });
            match built {
                Ok(built) => built,
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    return exit::FAILURE;
                }
            }
        }
        None => (None, None),
    };
    // the pool index built in the init phase, not by the first invocation
    let pool = Arc::new(AccountPool::default());
    pool.warm(&snapshot);
    tracing::info!(
        version = %snapshot.version(),
        directory = directory.is_some(),
        lifecycle = lifecycle.is_some(),
        "Lambda handler ready"
    );
    let handler = service_fn(move |event: LambdaEvent<Value>| {
        let (snapshot, pool, directory, lifecycle) =
            (snapshot.clone(), pool.clone(), directory.clone(), lifecycle.clone());
        async move {
            if is_membership_source(&event.payload) || is_schedule(&event.payload) {
                return membership(lifecycle.as_deref(), &snapshot, event).await;
            }
            answer(&pool, &snapshot, directory.as_deref(), event).await
        }
    });
    match runtime.block_on(lambda_runtime::run(handler)) {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(err, "error: the Lambda runtime stopped: {e}");
            exit::FAILURE
        }
    }
}

/// One invocation: the same `parse` (and so the same size limit) and `apply` as the
/// HTTP route. An error result carries a stable `errorType` ([`EventError::error_type`],
/// [`UserError::error_type`]).
async fn answer(
    pool: &AccountPool,
    snapshot: &PolicySnapshot,
    directory: Option<&Directory>,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    let request_id = event.context.request_id;
    let refused = |e: EventError| {
        tracing::info!(request_id, error = %e, error_type = e.error_type(), "account-pool event refused");
        Diagnostic { error_type: e.error_type().to_owned(), error_message: e.to_string() }
    };
    let body = serde_json::to_vec(&event.payload)
        .map_err(|e| Diagnostic { error_type: "InvalidEvent".to_owned(), error_message: e.to_string() })?;
    let operation = parse(&body).map_err(refused)?;
    let entities = match directory {
        Some(directory) => directory_entities(directory, snapshot, &operation).await.map_err(|e: UserError| {
            tracing::warn!(request_id, error = %e, "account-pool user not read from the directory");
            Diagnostic { error_type: e.error_type().to_owned(), error_message: e.to_string() }
        })?,
        None => Vec::new(),
    };
    pool.apply_over(snapshot, &operation, &request_id, entities).map_err(refused)
}

/// One group-membership event: the same handler as the `membership_events` route.
async fn membership(
    lifecycle: Option<&Lifecycle>,
    snapshot: &Arc<PolicySnapshot>,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    let request_id = event.context.request_id;
    let Some(lifecycle) = lifecycle else {
        tracing::warn!(request_id, "a membership event arrived, but the configuration has no [lifecycle]");
        return Err(Diagnostic {
            error_type: "LifecycleNotConfigured".to_owned(),
            error_message: "membership events need `lambda --config` with a `[lifecycle]` section".to_owned(),
        });
    };
    lifecycle
        .handle_value(&event.payload, &request_id, snapshot)
        .await
        .map_err(|e| Diagnostic { error_type: e.error_type().to_owned(), error_message: e.to_string() })
}
