//! Pages of a list answer, for callers that ask for them with `maxResults`.

use serde_json::{Value, json};

use super::event::{EventError, ListRequest};

/// The largest page a list answer has when the caller asks for pages.
const MAX_PAGE: usize = 100;

/// Everything in one page, unless the caller asked for pages with `maxResults`.
pub(super) fn page(items: Vec<Value>, request: &ListRequest) -> Result<Value, EventError> {
    let start = match request.next_token.as_deref() {
        None => 0,
        Some(token) => {
            token.strip_prefix("offset-").and_then(|n| n.parse::<usize>().ok()).ok_or(EventError::BadNextToken)?
        }
    };
    let size = match request.max_results {
        None => items.len().max(1),
        Some(n) => usize::try_from(n).unwrap_or(1).clamp(1, MAX_PAGE),
    };
    let end = start.saturating_add(size).min(items.len());
    let page: Vec<Value> = items.get(start.min(items.len())..end).unwrap_or_default().to_vec();
    let mut response = serde_json::Map::new();
    response.insert("items".into(), Value::Array(page));
    if end < items.len() {
        response.insert("nextToken".into(), json!(format!("offset-{end}")));
    }
    Ok(json!({"operationResponse": {"listAuthorizedAccountsResponse": response}}))
}
