//! The pool accounts of one snapshot, indexed once, and the list answer built over them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use cedar_policy::EvalResult;
use serde_json::{Value, json};

use super::question::{Question, Refusal, account_type, is_account_id, use_account};
use crate::authz::{Decision, Engine, ResourceObservation, View};
use crate::policy_store::PolicySnapshot;

/// `AccountInfo.supportedRegions` holds 1 to 3 regions.
const MAX_REGIONS: usize = 3;
/// `AccountInfo.awsAccountName` is 1 to 256 characters.
const MAX_NAME: usize = 256;

/// The pool accounts of one snapshot, read once and kept while it serves (see
/// [`super::AccountPool`]): each account's id, name and sorted regions, in id
/// order, and its class. Accounts of one class look the same to every `UseAccount`
/// policy ([`ResourceObservation`]), so they get the same answer to the same question,
/// and a list decides each class and region once, however many accounts share them.
#[derive(Debug)]
pub(super) struct PoolIndex {
    /// Sorted by account id (looked up by binary search: a map by id would hold every
    /// id twice).
    pub(super) accounts: Vec<PoolAccount>,
    pub(super) classes: usize,
    /// Why the policies can tell accounts apart by id, when they can.
    pub(super) by_uid: Option<String>,
}

/// How lists over a snapshot's pool are decided (for `authz-sidecar validate` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSharing {
    /// Pool accounts (`DataZone::Account` entities).
    pub accounts: usize,
    /// Classes of accounts that no `UseAccount` policy can tell apart; a list makes one
    /// decision per class and region.
    pub classes: usize,
    /// Why every account is its own class, when a policy uses the account as a value.
    pub by_uid: Option<String>,
}

/// One pool account, as lists and validate read it: a few dozen bytes, the region
/// lists shared between the accounts that have the same one (most do).
#[derive(Debug)]
pub(super) struct PoolAccount {
    id: Box<str>,
    name: Option<Box<str>>,
    /// Sorted.
    pub(super) regions: Arc<[Box<str>]>,
    class: usize,
}

impl PoolIndex {
    pub(super) fn build(snapshot: &PolicySnapshot) -> Self {
        let (Some(action), Some(account_type)) = (use_account(), account_type()) else {
            return Self { accounts: Vec::new(), classes: 0, by_uid: None };
        };
        let observation = ResourceObservation::of(snapshot.policies_for(&action), &account_type);
        let mut classes: BTreeMap<View, usize> = BTreeMap::new();
        let mut next_class = 0;
        let mut accounts = Vec::new();
        let mut region_lists: HashSet<Arc<[Box<str>]>> = HashSet::new();
        for uid in snapshot.entities_of_type(&account_type).iter() {
            // built for this once, not kept: the index holds what lists need of each account
            let account = match snapshot.stored_entity_once(&uid) {
                Ok(Some(account)) => account,
                Ok(None) => continue,
                Err(error) => {
                    // checked when the snapshot was built: cannot happen, but an account
                    // that cannot be read is left out of every list (validate denies it)
                    tracing::error!(account = %uid, %error, "a stored pool account could not be built; left out");
                    continue;
                }
            };
            // a new view, or no view at all, starts a class of its own
            let mut new_class = || {
                next_class += 1;
                next_class - 1
            };
            let class = match observation.view(&account, |target| snapshot.is_stored_ancestor(target, &uid)) {
                Some(view) => *classes.entry(view).or_insert_with(new_class),
                None => new_class(),
            };
            let mut regions: Vec<Box<str>> = match account.attr("regions").and_then(Result::ok) {
                Some(EvalResult::Set(set)) => set
                    .iter()
                    .filter_map(|r| match r {
                        EvalResult::String(s) => Some(s.as_str().into()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            regions.sort();
            let regions = match region_lists.get(regions.as_slice()) {
                Some(shared) => Arc::clone(shared),
                None => {
                    let list: Arc<[Box<str>]> = regions.into();
                    region_lists.insert(Arc::clone(&list));
                    list
                }
            };
            let name = match account.attr("name").and_then(Result::ok) {
                Some(EvalResult::String(name)) if !name.is_empty() => Some(name.chars().take(MAX_NAME).collect()),
                _ => None,
            };
            accounts.push(PoolAccount { id: uid.id().unescaped().into(), name, regions, class });
        }
        match observation.by_uid() {
            Some(reason) => tracing::info!(
                accounts = accounts.len(),
                reason,
                snapshot = %snapshot.version(),
                "account pool: the UseAccount policies can tell accounts apart by id, so a list decides every account on its own"
            ),
            None => tracing::debug!(
                accounts = accounts.len(),
                classes = next_class,
                attributes = %observation.attrs().collect::<Vec<_>>().join(","),
                snapshot = %snapshot.version(),
                "account pool indexed"
            ),
        }
        accounts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        accounts.shrink_to_fit();
        Self { accounts, classes: next_class, by_uid: observation.by_uid().map(str::to_owned) }
    }

    pub(super) fn sharing(&self) -> ListSharing {
        ListSharing { accounts: self.accounts.len(), classes: self.classes, by_uid: self.by_uid.clone() }
    }

    /// The pool account with this id.
    pub(super) fn account(&self, id: &str) -> Option<&PoolAccount> {
        let found = self.accounts.binary_search_by(|account| (*account.id).cmp(id)).ok()?;
        self.accounts.get(found)
    }
}

/// Every pool account with at least one region the user may use, sorted by account id:
/// `AccountInfo` items within the public limits. Each account and region is the same
/// question validate asks, decided by the same policies; an answer is shared with the
/// other accounts of its class only when it carries no evaluation error (an error's
/// message names the account it was evaluated for).
pub(super) fn authorized_accounts(
    engine: &Engine,
    snapshot: &PolicySnapshot,
    index: &PoolIndex,
    asked: &Question,
    request_id: &str,
) -> Vec<Value> {
    let mut decided: HashMap<(usize, &str), Rc<Result<Decision, Refusal>>> = HashMap::new();
    let mut items = Vec::new();
    for account in &index.accounts {
        let id = &*account.id;
        let permitted: Vec<&str> = account
            .regions
            .iter()
            .map(|region| &**region)
            .filter(|&region| {
                let decision = if !is_account_id(id) {
                    Rc::new(Err(Refusal::BadAccountId))
                } else if let Some(shared) = decided.get(&(account.class, region)) {
                    Rc::clone(shared)
                } else {
                    let decision = Rc::new(asked.decide(
                        engine,
                        snapshot,
                        (super::question::Operation::List, request_id),
                        id,
                        region,
                    ));
                    if matches!(&*decision, Ok(d) if d.errors.is_empty()) {
                        decided.insert((account.class, region), Rc::clone(&decision));
                    }
                    decision
                };
                asked.audit(super::question::Operation::List, snapshot, request_id, id, region, &decision)
            })
            .take(MAX_REGIONS)
            .collect();
        if permitted.is_empty() {
            continue;
        }
        // the order of AWS's sample: id, name, regions
        let mut item = serde_json::Map::new();
        item.insert("awsAccountId".into(), json!(id));
        if let Some(name) = &account.name {
            item.insert("awsAccountName".into(), json!(name));
        }
        item.insert("supportedRegions".into(), json!(permitted));
        items.push(Value::Object(item));
    }
    items
}
