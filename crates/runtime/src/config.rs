//! Settings read at start: the stream pool's size, exhaustion policy and
//! assignment, and the throttle's cap, from the builder or the environment
//! (`BRAID_STREAM_POOL_SIZE`, `BRAID_STREAM_POOL_WAIT_TIMEOUT_MS`,
//! `BRAID_MAX_INFLIGHT`). Owns their parsing and validation: a bad value is
//! an [`Error::Config`] naming the variable, never a panic.

use crate::error::{Error, Result};
use std::time::Duration;

/// Default number of streams per device (1 default + 31 worker slots).
pub const DEFAULT_POOL_SIZE: usize = 32;
/// The largest pool: worker slots live in one 64-bit freelist word.
pub const MAX_POOL_SIZE: usize = 65;

/// What a thread does when every worker slot is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExhaustionPolicy {
    /// Return [`Error::PoolExhausted`] at once (the default).
    Fail,
    /// Wait up to this long for a slot, then fail.
    Wait(Duration),
    /// Wait until a slot is released.
    WaitForever,
}

/// How threads are given streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Each thread gets a worker slot of its own (the default).
    Exclusive,
    /// CUDA-style: a counter modulo the worker count; never fails, may share.
    RoundRobin,
}

/// Stream pool settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub size: usize,
    pub policy: ExhaustionPolicy,
    pub assignment: Assignment,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { size: DEFAULT_POOL_SIZE, policy: ExhaustionPolicy::Fail, assignment: Assignment::Exclusive }
    }
}

impl PoolConfig {
    /// Defaults overridden by the environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`PoolConfig::from_env`] with a custom variable lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = PoolConfig::default();
        if let Some(v) = get("BRAID_STREAM_POOL_SIZE") {
            c.size = parse_size(&v)?;
        }
        if let Some(v) = get("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS") {
            c.policy = parse_timeout(&v)?;
        }
        if let Some(v) = get("BRAID_STREAM_POOL_ASSIGNMENT") {
            c.assignment = match v.trim() {
                "exclusive" => Assignment::Exclusive,
                "round-robin" | "roundrobin" => Assignment::RoundRobin,
                _ => {
                    return Err(Error::Config { name: "BRAID_STREAM_POOL_ASSIGNMENT", value: v, reason: "expected `exclusive` or `round-robin`".into() })
                }
            };
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.size < 2 || self.size > MAX_POOL_SIZE {
            return Err(Error::Config {
                name: "BRAID_STREAM_POOL_SIZE",
                value: self.size.to_string(),
                reason: format!("the pool needs 2..={MAX_POOL_SIZE} streams (1 default + at least 1 worker slot)"),
            });
        }
        Ok(())
    }

    /// Worker slots (every stream but the default one).
    pub fn workers(&self) -> usize {
        self.size - 1
    }
}

fn parse_size(v: &str) -> Result<usize> {
    let n: usize = v.trim().parse().map_err(|_| Error::Config { name: "BRAID_STREAM_POOL_SIZE", value: v.into(), reason: "not a whole number".into() })?;
    let c = PoolConfig { size: n, ..Default::default() };
    c.validate()?;
    Ok(n)
}

/// `0` = fail at once, `N` = wait N ms, `-1` = wait forever.
pub fn parse_timeout(v: &str) -> Result<ExhaustionPolicy> {
    let err = |reason: &str| Error::Config { name: "BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", value: v.into(), reason: reason.into() };
    let n: i64 = v.trim().parse().map_err(|_| err("not a number: use 0 (fail at once), N milliseconds, or -1 (wait forever)"))?;
    match n {
        0 => Ok(ExhaustionPolicy::Fail),
        -1 => Ok(ExhaustionPolicy::WaitForever),
        n if n > 0 => Ok(ExhaustionPolicy::Wait(Duration::from_millis(n as u64))),
        _ => Err(err("negative values other than -1 are not allowed")),
    }
}

/// `BRAID_MAX_INFLIGHT`: unset or `0` = unlimited.
pub fn max_inflight_from_env() -> Result<Option<usize>> {
    match std::env::var("BRAID_MAX_INFLIGHT") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(Error::Config { name: "BRAID_MAX_INFLIGHT", value: v, reason: "expected a whole number (0 or unset = unlimited)".into() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn cfg(pairs: &[(&str, &str)]) -> Result<PoolConfig> {
        PoolConfig::from_lookup(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }
    #[test]
    fn parses_and_rejects() {
        assert_eq!(cfg(&[]).unwrap(), PoolConfig::default());
        assert_eq!(cfg(&[("BRAID_STREAM_POOL_SIZE", "8")]).unwrap().size, 8);
        assert!(matches!(cfg(&[("BRAID_STREAM_POOL_SIZE", "0")]), Err(Error::Config { .. })));
        assert!(matches!(cfg(&[("BRAID_STREAM_POOL_SIZE", "1000")]), Err(Error::Config { .. })));
        assert!(matches!(cfg(&[("BRAID_STREAM_POOL_SIZE", "x")]), Err(Error::Config { .. })));
        assert_eq!(cfg(&[("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", "-1")]).unwrap().policy, ExhaustionPolicy::WaitForever);
        assert_eq!(cfg(&[("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", "0")]).unwrap().policy, ExhaustionPolicy::Fail);
        assert_eq!(cfg(&[("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", "25")]).unwrap().policy, ExhaustionPolicy::Wait(Duration::from_millis(25)));
        assert!(matches!(cfg(&[("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", "soon")]), Err(Error::Config { .. })));
        assert!(matches!(cfg(&[("BRAID_STREAM_POOL_WAIT_TIMEOUT_MS", "-5")]), Err(Error::Config { .. })));
        let e = cfg(&[("BRAID_STREAM_POOL_SIZE", "0")]).unwrap_err().to_string();
        assert!(e.contains("BRAID_STREAM_POOL_SIZE"), "{e}");
    }
}
