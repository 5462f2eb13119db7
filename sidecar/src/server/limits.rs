//! The process's file-descriptor budget, and the data-plane connection cap that fits it.
//!
//! Every open connection is a descriptor, and so is every upstream connection, policy
//! file and AWS client socket. If the data plane could take them all, a flood of idle
//! sockets would stop the admin listener (`/livez`) and the upstream calls too. So at
//! start the soft `RLIMIT_NOFILE` is raised to the hard limit where the platform allows
//! (both are logged), and the data plane may hold at most half of what is left after a
//! fixed reserve (the admin listener's cap, files, clients): the other half is for the
//! upstream connections its requests open. What is left is counted once the sidecar has
//! started: its threads hold descriptors of their own (each runtime's poller, and a copy
//! of each listening socket), a few per thread, which a sidecar with many threads under a
//! low limit would otherwise count twice as free.

/// Descriptors kept back for the admin listener's connections and everything else.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The most data-plane connections the default allows whatever the limit: a sidecar
/// serves one API replica, and each connection may hold a request head in memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The fewest the budget ever gives.
const MIN_CONNECTIONS: usize = 8;

/// The descriptor limits, as (soft, hard); `None` where the platform has none to read.
pub fn nofile() -> Option<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok()
}

/// Raise the soft descriptor limit to the hard one (where allowed) and log both.
/// Returns the soft limit now in force.
pub fn raise_nofile() -> Option<u64> {
    let (before, hard) = nofile()?;
    let now = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(soft = before, hard, error = %e, "cannot raise the descriptor limit");
            before
        }
    };
    tracing::info!(soft_before = before, soft = now, hard, "descriptor limit");
    Some(now)
}

/// The descriptors this process has open now; `None` where that cannot be read (only
/// Linux's `/proc/self/fd` is read).
pub fn open_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // the directory being read is one of them
    Some((entries.count() as u64).saturating_sub(1))
}

/// The descriptors still to be had under the soft limit `soft` with `open` in use.
pub fn headroom(soft: Option<u64>, open: Option<u64>) -> Option<u64> {
    soft.map(|soft| soft.saturating_sub(open.unwrap_or(0)))
}

/// The data-plane connection cap for a soft descriptor limit: half of what the reserve
/// leaves, at most [`DEFAULT_MAX_CONNECTIONS`].
pub fn connection_budget(soft: u64) -> usize {
    let half = soft.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).clamp(MIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)
}

/// The cap to use: the configured one, lowered (with a warning) to what the descriptor
/// limit allows; or the budget when none is configured.
pub fn max_connections(configured: Option<usize>, soft: Option<u64>) -> usize {
    let budget = soft.map(|soft| {
        let half = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS) / 2).unwrap_or(usize::MAX);
        half.max(MIN_CONNECTIONS)
    });
    match (configured, budget) {
        (Some(wanted), Some(allowed)) if wanted > allowed => {
            tracing::warn!(
                configured = wanted,
                allowed,
                "server.max_connections is more than the descriptor limit allows; lowered"
            );
            allowed
        }
        (Some(wanted), _) => wanted,
        (None, _) => soft.map_or(DEFAULT_MAX_CONNECTIONS, connection_budget),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_budget(1024), 448);
        assert_eq!(connection_budget(256), 64);
        assert_eq!(connection_budget(100), MIN_CONNECTIONS);
        assert_eq!(connection_budget(1 << 20), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(max_connections(None, Some(1024)), 448);
        assert_eq!(max_connections(Some(100), Some(1024)), 100);
        assert_eq!(max_connections(Some(100_000), Some(1024)), 448, "never above the budget");
        assert_eq!(max_connections(Some(10_000), Some(1 << 20)), 10_000, "an explicit cap may pass the default");
        assert_eq!(max_connections(None, None), DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn what_is_open_already_is_not_counted_as_free() {
        let open = open_descriptors().expect("Linux");
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_descriptors().unwrap() > open, "one more with a file open");
        drop(file);
        assert_eq!(headroom(Some(1024), Some(600)), Some(424));
        assert_eq!(headroom(Some(1024), None), Some(1024), "unknown: the limit as before");
        assert_eq!(headroom(Some(100), Some(600)), Some(0));
        assert_eq!(headroom(None, Some(600)), None);
        assert_eq!(max_connections(None, headroom(Some(1024), Some(600))), 148);
    }
}
