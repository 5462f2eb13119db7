//! `authz-sidecar avp push|pull`: publish `policies/` to a Verified Permissions policy
//! store, or write a store out as files.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_sdk_verifiedpermissions::Client;

use super::{Sources, exit, print_problems};
use crate::avp::mirror::Mirror;
use crate::avp::push;
use crate::config::AwsConfig;
use crate::policy_store::Sources as SourceTexts;
use crate::policy_store::{PolicySnapshot, SourceDirs};

/// Publish policies to, or read them from, an Amazon Verified Permissions policy store.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make a store match `policies/`: put the schema, create, update and delete static
    /// policies keyed by their `@id` (the store policy's name). Prints the plan first;
    /// refuses anything that does not validate locally.
    Push(PushArgs),
    /// Write a store as `schema.cedarschema` and `.cedar` files, to move it into git.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
struct Store {
    /// The policy store id (or `policy-store-alias/NAME`).
    #[arg(long, value_name = "ID")]
    policy_store_id: String,
    /// AWS region (default: the standard AWS configuration chain).
    #[arg(long)]
    region: Option<String>,
    /// Send requests here instead of the regional endpoint (a VPC endpoint, a test double).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct PushArgs {
    #[command(flatten)]
    store: Store,
    #[command(flatten)]
    sources: Sources,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
struct PullArgs {
    #[command(flatten)]
    store: Store,
    /// Directory to write the files into (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(async {
        let store = match &args.command {
            Command::Push(a) => &a.store,
            Command::Pull(a) => &a.store,
        };
        let aws = AwsConfig {
            region: store.region.clone(),
            sts_endpoint: None,
            sagemaker_endpoint: None,
            sts_endpoints: std::collections::BTreeMap::new(),
            sagemaker_endpoints: std::collections::BTreeMap::new(),
            verifiedpermissions_endpoint: store.endpoint_url.clone(),
            timeout: std::time::Duration::from_secs(30),
        };
        let base = crate::aws::load(&aws).await;
        let client = crate::avp::client(&base, aws.verifiedpermissions_endpoint.as_deref());
        match &args.command {
            Command::Push(a) => {
                push_to_store(&client, &a.store.policy_store_id, &a.sources.dirs(), a.dry_run, out, err).await
            }
            Command::Pull(a) => pull_to_files(&client, &a.store.policy_store_id, &a.out, out, err).await,
        }
    })
}

/// `avp push`, on a given client (tests pass a mocked one).
pub async fn push_to_store(
    client: &Client,
    store: &str,
    dirs: &SourceDirs,
    dry_run: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // everything the sidecar would check, entities included
    let local = match PolicySnapshot::load(dirs, 1) {
        Ok(local) => local,
        Err(e) => {
            print_problems(err, &e);
            let _ = writeln!(err, "refusing to push: the local policies do not validate");
            return exit::FAILURE;
        }
    };
    let converted = SourceTexts::read(dirs)
        .map_err(|e| e.to_string())
        .and_then(|texts| push::schema_json(&texts.schemas).map_err(|e| e.to_string()));
    let schema = match converted {
        Ok(schema) => schema,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            let _ = writeln!(err, "refusing to push: the local schema cannot be converted");
            return exit::FAILURE;
        }
    };
    let (remote_schema, remote, linked) = match push::read_remote(client, store).await {
        Ok(remote) => remote,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::FAILURE;
        }
    };
    let plan = push::plan(&local, &schema, remote_schema.as_deref(), &remote, linked);
    let _ = writeln!(out, "plan for policy store {store}:\n{plan}");
    if dry_run {
        let _ = writeln!(out, "dry run: nothing changed");
        return exit::OK;
    }
    if plan.is_empty() {
        let _ = writeln!(out, "the store already matches {}", dirs.policies.display());
        return exit::OK;
    }
    match push::apply(client, store, &plan, out).await {
        Ok(()) => {
            let _ = writeln!(out, "done");
            exit::OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            let _ = writeln!(err, "the push stopped part way; run it again to finish (it only does what is left)");
            exit::FAILURE
        }
    }
}

/// `avp pull`, on a given client.
pub async fn pull_to_files(client: &Client, store: &str, dir: &Path, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut mirror = Mirror::new(client.clone(), store, usize::MAX);
    let contents = match mirror.fetch().await {
        Ok(contents) => contents,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::FAILURE;
        }
    };
    match push::write_files(&contents, dir) {
        Ok(written) => {
            for path in written {
                let _ = writeln!(out, "wrote {}", path.display());
            }
            exit::OK
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            exit::FAILURE
        }
    }
}
