//! The data plane's side of a removal: which teams a token no longer counts.
//!
//! A revocation says "`principal` left `team` at `at`". A token issued before `at` (plus
//! the configured clock skew) was issued while the principal was still a member, so its
//! groups claim may still list the team: for such a token the team is dropped from the
//! principal (its parents and the tags mapped from the groups claim), whatever the token
//! or a stored entity says. A token issued later is the issuer's word after the change.
//! A token without `iat` counts as issued before every revocation. The revocation ends
//! once every token issued before it has expired (`token_lifetime`).
//!
//! Each request reads its principal's revocations from the store (one strongly
//! consistent query) unless the last read is younger than `believe_for` (default 0s:
//! always). While the store cannot be read, the last answer is used up to
//! `max_staleness` old; past that the request is refused (503), never let through on a
//! guess.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{Revocation, Store, StoreError};
use crate::authn::now_secs;
use crate::config::LifecycleConfig;

/// What is known of one principal's revocations, and since when.
#[derive(Debug, Clone)]
pub struct Known {
    revoked: Vec<Revocation>,
    read: Instant,
}

impl Known {
    /// The teams a token issued at `issued_at` (Unix seconds) no longer counts, sorted.
    pub fn lost(&self, issued_at: Option<u64>, skew: Duration, now: u64) -> Vec<String> {
        let issued_at = issued_at.unwrap_or(0);
        self.revoked
            .iter()
            .filter(|r| r.until > now && issued_at < r.at.saturating_add(skew.as_secs()))
            .map(|r| r.team.clone())
            .collect()
    }
}

pub struct Revocations {
    store: Arc<Store>,
    believe_for: Duration,
    max_staleness: Duration,
    pub(crate) skew: Duration,
    known: moka::sync::Cache<String, Arc<Known>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("store", &self.store).finish_non_exhaustive()
    }
}

impl Revocations {
    pub fn new(store: Arc<Store>, config: &LifecycleConfig) -> Self {
        let keep = config.max_staleness.max(Duration::from_secs(1));
        Self {
            store,
            believe_for: config.believe_for,
            max_staleness: config.max_staleness,
            skew: config.clock_skew,
            known: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(keep).build(),
        }
    }

    /// `principal`'s revocations, read again unless the last read is younger than
    /// `believe_for`; on a failed read, the last answer within `max_staleness`.
    pub async fn of(&self, principal: &str) -> Result<Arc<Known>, StoreError> {
        let cached = self.known.get(principal);
        if let Some(known) = &cached
            && known.read.elapsed() < self.believe_for
        {
            return Ok(known.clone());
        }
        let started = Instant::now();
        let read = self.store.revocations(principal, now_secs()).await;
        metrics::histogram!("authz_revocation_read_seconds").record(started.elapsed().as_secs_f64());
        match read {
            Ok(revoked) => {
                let known = Arc::new(Known { revoked, read: Instant::now() });
                self.known.insert(principal.to_owned(), known.clone());
                Ok(known)
            }
            Err(error) => {
                metrics::counter!("authz_revocation_read_failures_total").increment(1);
                match cached {
                    Some(known) if known.read.elapsed() <= self.max_staleness => {
                        tracing::warn!(%error, "revocations not read; using the last answer within max_staleness");
                        Ok(known)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// This process recorded `revocation` for `principal`: count it at once, whatever
    /// `believe_for` says.
    pub fn note(&self, principal: &str, revocation: Revocation) {
        let mut revoked = self.known.get(principal).map(|k| k.revoked.clone()).unwrap_or_default();
        match revoked.iter_mut().find(|r| r.team == revocation.team) {
            Some(existing) if existing.at >= revocation.at => {}
            Some(existing) => *existing = revocation,
            None => revoked.push(revocation),
        }
        // as old as a read can be, so the next request reads the store again
        let read = Instant::now().checked_sub(self.believe_for).unwrap_or_else(Instant::now);
        self.known.insert(principal.to_owned(), Arc::new(Known { revoked, read }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(revoked: &[(&str, u64, u64)]) -> Known {
        let revoked =
            revoked.iter().map(|(team, at, until)| Revocation { team: (*team).to_owned(), at: *at, until: *until });
        Known { revoked: revoked.collect(), read: Instant::now() }
    }

    #[test]
    fn a_token_issued_before_a_removal_loses_the_team_and_a_later_one_keeps_it() {
        let skew = Duration::from_secs(300);
        let known = known(&[("Team1", 10_000, 50_000), ("Team2", 20_000, 60_000)]);
        assert_eq!(known.lost(Some(9_000), skew, 30_000), ["Team1", "Team2"]);
        assert_eq!(known.lost(Some(10_200), skew, 30_000), ["Team1", "Team2"], "within the skew");
        assert_eq!(known.lost(Some(10_400), skew, 30_000), ["Team2"]);
        assert_eq!(known.lost(None, skew, 30_000), ["Team1", "Team2"], "no iat: issued before everything");
        assert_eq!(known.lost(Some(9_000), skew, 55_000), ["Team2"], "Team1's revocation has ended");
    }
}
