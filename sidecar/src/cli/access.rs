//! `authz-sidecar access`: the resources of a type an action allows one principal.

use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::EntityTypeName;

use super::authorize::{AskError, Asking, context_object, read_entities};
use super::{Sources, exit};
use crate::access::{self, Answer, Question};
use crate::authz::{Asker, Engine, QuestionContext, RequestError, parse_entity_uid, resolve_action};
use crate::policy_store::{CheckedEntity, PolicySnapshot};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    sources: Sources,
    /// Who asks, e.g. 'Studio::User::"user-1"': a stored entity, or one given in
    /// --request-entities (how the sidecar adds the principal a token builds).
    #[arg(long, value_name = "UID")]
    principal: String,
    /// The action: a full uid, or its name when that is unique (CreatePresignedDomainUrl).
    #[arg(long, value_name = "ACTION")]
    action: String,
    /// The type of the resources, e.g. Studio::UserProfile.
    #[arg(long, value_name = "TYPE")]
    resource_type: String,
    /// The context is the one the answer holds for; the request entities of the
    /// resource type are candidates too.
    #[command(flatten)]
    asking: Asking,
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let snapshot = match args.sources.load(err) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let answer = match ask(args, &snapshot) {
        Ok(answer) => answer,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return exit::FAILURE;
        }
    };
    if args.asking.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&answer).unwrap_or_default());
        return exit::OK;
    }
    let _ = writeln!(
        out,
        "{} may {} {} of {} {}:",
        answer.principal,
        answer.action,
        answer.allowed.len(),
        answer.candidates,
        answer.resource_type
    );
    for allowed in &answer.allowed {
        let derived = if allowed.derived { ", derived" } else { "" };
        let _ = writeln!(out, "  {}  (by {}{derived})", allowed.resource, allowed.policies.join(", "));
    }
    if !answer.context_read.is_empty() {
        let _ = writeln!(
            out,
            "note: the policies read the context ({}): this answer holds for the context given",
            answer.context_read.join(", ")
        );
    }
    let _ = writeln!(out, "decisions: {}; snapshot: {}", answer.decisions, answer.snapshot);
    exit::OK
}

fn ask(args: &Args, snapshot: &PolicySnapshot) -> Result<Answer, AskError> {
    let principal = parse_entity_uid(&args.principal)?;
    let action = resolve_action(snapshot.schema(), &args.action)?;
    let resource_type = EntityTypeName::from_str(args.resource_type.trim())
        .map_err(|e| RequestError::Invalid(format!("`{}` is not an entity type: {e}", args.resource_type.trim())))?;
    let context = context_object(&args.asking.context)?;
    let entities = match &args.asking.request_entities {
        Some(path) => read_entities(path, snapshot)?,
        None => Vec::new(),
    };
    let mut asker = Asker::Uid(principal.clone());
    let (mut checked, mut unlisted) = (Vec::new(), Vec::new());
    for entity in entities {
        let entity = Arc::new(CheckedEntity::new(entity));
        if entity.uid() == &principal {
            asker = Asker::Built(entity);
        } else if entity.uid().type_name() == &resource_type && !snapshot.holds(entity.uid()) {
            // a resource no file lists is a candidate of its own; one that stands in for
            // a stored resource is one of the question's entities, like any other
            unlisted.push(entity);
        } else {
            checked.push(entity);
        }
    }
    let question = Question {
        principal: asker,
        action,
        resource_type,
        context: QuestionContext::Json(context),
        checked,
        unlisted,
    };
    Ok(access::query(&Engine::new(), snapshot, &question)?)
}
