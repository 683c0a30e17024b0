//! Settings read at start: the stream pool's size, exhaustion policy and
//! assignment, and the throttle's cap, from the builder or the environment
//! (`BRAID_STREAM_POOL_SIZE`, `BRAID_STREAM_POOL_WAIT_TIMEOUT_MS`,
//! `BRAID_MAX_INFLIGHT`), and the CPU backend's GEMM and profiling knobs
//! ([`check_cpu_knobs`]). Owns their parsing and validation: a bad value is
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

/// The CPU backend's knobs (docs/cpu.md), checked when a device opens so a
/// value braid cannot honour is an error rather than a silent default: the
/// kernels read them lazily, deep in a stream job, where no error can be
/// returned.
/// - `BRAID_CPU_AVX512`: `0` (AVX2 at most) or `1` (AVX-512, an error on a
///   CPU without AVX-512F/BW/DQ/VL); unset: AVX-512 where the CPU has it.
/// - `BRAID_CPU_KBLOCK`: `0` or `1`.
/// - `BRAID_CPU_SPLIT`: `balanced`, `traffic` or `makespan`.
/// - `BRAID_CPU_GEMM_SPLIT_PER_THREAD`: 1 to 4.
/// - `BRAID_CPU_PROFILE`: `0` or `1`.
pub fn check_cpu_knobs(get: impl Fn(&str) -> Option<String>, cpu_has_avx512: bool) -> Result<()> {
    let bad = |name: &'static str, value: &str, reason: &str| Err(Error::Config { name, value: value.into(), reason: reason.into() });
    for name in ["BRAID_CPU_KBLOCK", "BRAID_CPU_PROFILE"] {
        if let Some(v) = get(name) {
            if !matches!(v.trim(), "0" | "1") {
                return bad(name, &v, "expected 0 or 1");
            }
        }
    }
    if let Some(v) = get("BRAID_CPU_AVX512") {
        match v.trim() {
            "0" => {}
            "1" if cpu_has_avx512 => {}
            "1" => return bad("BRAID_CPU_AVX512", &v, "this CPU has no AVX-512F/BW/DQ/VL (with AVX2 and FMA); unset it or set 0"),
            _ => return bad("BRAID_CPU_AVX512", &v, "expected 0 or 1"),
        }
    }
    if let Some(v) = get("BRAID_CPU_SPLIT") {
        if !matches!(v.trim(), "balanced" | "traffic" | "makespan") {
            return bad("BRAID_CPU_SPLIT", &v, "expected `balanced`, `traffic` or `makespan`");
        }
    }
    if let Some(v) = get("BRAID_CPU_GEMM_SPLIT_PER_THREAD") {
        if !matches!(v.trim().parse::<usize>(), Ok(1..=4)) {
            return bad("BRAID_CPU_GEMM_SPLIT_PER_THREAD", &v, "expected a whole number from 1 to 4");
        }
    }
    Ok(())
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

    #[test]
    fn cpu_knobs_are_checked() {
        let check = |kv: &[(&str, &str)], avx512: bool| {
            let kv: Vec<(String, String)> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            check_cpu_knobs(move |k| kv.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()), avx512)
        };
        assert!(check(&[], false).is_ok());
        for ok in [("BRAID_CPU_KBLOCK", "0"), ("BRAID_CPU_PROFILE", "1"), ("BRAID_CPU_AVX512", "0"), ("BRAID_CPU_SPLIT", "traffic"), ("BRAID_CPU_GEMM_SPLIT_PER_THREAD", "4")] {
            assert!(check(&[ok], false).is_ok(), "{ok:?}");
        }
        assert!(check(&[("BRAID_CPU_AVX512", "1")], true).is_ok());
        for bad in [("BRAID_CPU_KBLOCK", "yes"), ("BRAID_CPU_PROFILE", "2"), ("BRAID_CPU_AVX512", "1"), ("BRAID_CPU_AVX512", "on"), ("BRAID_CPU_SPLIT", "fast"), ("BRAID_CPU_GEMM_SPLIT_PER_THREAD", "0"), ("BRAID_CPU_GEMM_SPLIT_PER_THREAD", "9"), ("BRAID_CPU_GEMM_SPLIT_PER_THREAD", "x")] {
            let e = check(&[bad], false).expect_err(&format!("{bad:?} accepted"));
            assert!(e.to_string().contains(bad.0), "{e}");
        }
    }
}
