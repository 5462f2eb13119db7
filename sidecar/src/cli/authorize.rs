//! `authz-sidecar authorize`: decide one request and explain it.

use std::io::Write;
use std::path::PathBuf;

use cedar_policy::{Entity, PolicyId};

use super::{Sources, exit};
use crate::authz::{Decision, DecisionRequest, Effect, Engine, RequestError, parse_entity_uid, resolve_action};
use crate::decision_tables::describe_decision;
use crate::policy_store::PolicySnapshot;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    sources: Sources,
    /// Who asks, as a Cedar entity uid, e.g. 'Studio::User::"user-1"'.
    #[arg(long, value_name = "UID")]
    principal: String,
    /// What they ask to do: a full action uid, or just its name when that is unique,
    /// e.g. CreatePresignedDomainUrl.
    #[arg(long, value_name = "ACTION")]
    action: String,
    /// What they ask it of, e.g. 'Studio::UserProfile::"user-1-team1"'.
    #[arg(long, value_name = "UID")]
    resource: String,
    #[command(flatten)]
    asking: Asking,
}

/// What `authorize` and `access` take besides the question's uids.
#[derive(Debug, clap::Args)]
pub(super) struct Asking {
    /// The request context as a JSON object, e.g.
    /// '{"sourceVpce": "vpce-0a1a000000000001a", "sourceIp": "10.1.2.3"}'.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub(super) context: String,
    /// A JSON file of extra entities for this request (Cedar entity JSON), replacing
    /// stored entities with the same uid: how the sidecar adds a token's principal.
    #[arg(long, value_name = "FILE")]
    pub(super) request_entities: Option<PathBuf>,
    /// Print the answer as one JSON object instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let snapshot = match args.sources.load(err) {
        Ok(snapshot) => snapshot,
        Err(code) => return code,
    };
    let decision = match decide(args, &snapshot) {
        Ok(decision) => decision,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return exit::FAILURE;
        }
    };
    if args.asking.json {
        let _ = writeln!(out, "{}", serde_json::to_string(&decision).unwrap_or_default());
    } else {
        print_text(out, args, &snapshot, &decision);
    }
    match decision.effect {
        Effect::Allow => exit::OK,
        Effect::Deny => exit::DENIED,
    }
}

/// Why the question could not be asked.
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("--context is not a JSON object: {0}")]
    ContextNotJson(serde_json::Error),
    #[error("--context must be a JSON object, e.g. '{{\"sourceIp\": \"10.1.2.3\"}}'")]
    ContextNotObject,
    #[error("cannot read `{}`: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{}` is not a JSON array of entities: {source}", path.display())]
    NotEntities { path: PathBuf, source: serde_json::Error },
    #[error("`{}`: {reason}", path.display())]
    Entity { path: PathBuf, reason: String },
}

fn decide(args: &Args, snapshot: &PolicySnapshot) -> Result<Decision, AskError> {
    let principal = parse_entity_uid(&args.principal)?;
    let action = resolve_action(snapshot.schema(), &args.action)?;
    let resource = parse_entity_uid(&args.resource)?;
    let context = context_object(&args.asking.context)?;
    let entities = match &args.asking.request_entities {
        Some(path) => read_entities(path, snapshot)?,
        None => Vec::new(),
    };
    let request = DecisionRequest::new(principal, action, resource).with_context(context).with_entities(entities);
    Ok(Engine::new().decide(snapshot, &request)?)
}

/// `--context`: a JSON object.
pub(super) fn context_object(text: &str) -> Result<serde_json::Value, AskError> {
    let context: serde_json::Value = serde_json::from_str(text).map_err(AskError::ContextNotJson)?;
    if !context.is_object() {
        return Err(AskError::ContextNotObject);
    }
    Ok(context)
}

pub(super) fn read_entities(path: &std::path::Path, snapshot: &PolicySnapshot) -> Result<Vec<Entity>, AskError> {
    let text = std::fs::read_to_string(path).map_err(|source| AskError::Read { path: path.to_path_buf(), source })?;
    let items: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|source| AskError::NotEntities { path: path.to_path_buf(), source })?;
    items
        .into_iter()
        .map(|json| {
            Entity::from_json_value(json, Some(snapshot.schema()))
                .map_err(|e| AskError::Entity { path: path.to_path_buf(), reason: e.to_string() })
        })
        .collect()
}

fn print_text(out: &mut dyn Write, args: &Args, snapshot: &PolicySnapshot, decision: &Decision) {
    let verdict = match decision.effect {
        Effect::Allow => "ALLOW",
        Effect::Deny => "DENY",
    };
    let _ = writeln!(out, "{verdict}: {}", describe_decision(decision));
    let _ = writeln!(out, "  principal: {}", args.principal.trim());
    let _ = writeln!(out, "  action:    {}", args.action.trim());
    let _ = writeln!(out, "  resource:  {}", args.resource.trim());
    for id in decision.policies.iter() {
        let origin = snapshot.policy_origin(&PolicyId::new(id)).map(ToString::to_string).unwrap_or_default();
        let _ = writeln!(out, "  policy:    {id}  ({origin})");
    }
    for error in &decision.errors {
        let _ = writeln!(out, "  error:     {}: {}", error.policy, error.message);
    }
    let _ = writeln!(
        out,
        "  snapshot:  {} ({} policies, {} entities)",
        decision.snapshot,
        snapshot.policy_count(),
        snapshot.entity_count()
    );
}
