//! `authz-sidecar validate`: is everything in the two directories valid?

use std::io::Write;

use super::{Sources, exit};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    sources: Sources,
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let snapshot = match args.sources.load(err) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    for warning in snapshot.warnings() {
        let _ = writeln!(err, "warning: {warning}");
    }
    let _ = writeln!(
        out,
        "valid: {} policies and {} entities in `{}` and `{}` (snapshot {})",
        snapshot.policy_count(),
        snapshot.entity_count(),
        args.sources.policies.display(),
        args.sources.entities.display(),
        snapshot.version(),
    );
    let sharing = crate::handlers::account_pool::AccountPool::default().list_sharing(&snapshot);
    if let (Some(reason), true) = (&sharing.by_uid, sharing.accounts > 0) {
        let _ = writeln!(
            err,
            "note: account-pool lists will decide each of the {} accounts on its own, because a UseAccount \
             policy can tell accounts apart by id: {reason}",
            sharing.accounts
        );
    }
    exit::OK
}
