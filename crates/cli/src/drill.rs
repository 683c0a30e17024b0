//! The fault-drill hook: `BRAID_INJECT_FAULT=DEVICE@DELAY[,DEVICE@DELAY..]`
//! (for instance `cuda:1@20s`, `cpu:1@500ms`) makes `braid serve` take
//! DEVICE down DELAY after it starts listening, exactly as a sticky CUDA
//! error would ([`Device::inject_fault`]: every later call on it fails with
//! `DevicePoisoned`). For operators' failover drills and the two-GPU
//! failover run (`scripts/gpu-multi.sh`); never set it in production. Owns
//! parsing the variable, checking it against the served devices before the
//! model loads (a malformed value or a device not served is a start-up
//! error), and the timer threads that inject the faults.

use braid_runtime::{Device, Error, Result};
use std::time::Duration;

/// The environment variable.
pub const VAR: &str = "BRAID_INJECT_FAULT";
/// Longest delay accepted (one day).
const MAX_DELAY: Duration = Duration::from_secs(86_400);

/// One fault to inject: `device` (`cuda:1`, `cpu:0`) `after` serving starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub device: String,
    pub after: Duration,
}

/// The device's name in a fault spec: `kind:ordinal`.
fn name(d: &Device) -> String {
    format!("{}:{}", d.kind().name(), d.backend().ordinal())
}

fn bad(value: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{VAR}={value:?}: {why}; expected DEVICE@DELAY[,DEVICE@DELAY..], e.g. cuda:1@20s or cpu:1@500ms (a fault-drill hook: the device fails DELAY after serving starts)"))
}

/// Parse a value of [`VAR`]. Empty or blank: no fault.
pub fn parse(value: &str) -> Result<Vec<Fault>> {
    let mut faults = Vec::new();
    if value.trim().is_empty() {
        return Ok(faults);
    }
    for part in value.split(',') {
        let part = part.trim();
        let Some((device, delay)) = part.split_once('@') else { return Err(bad(value, format!("{part:?} has no @DELAY"))) };
        let device = device.trim();
        let Some((kind, ordinal)) = device.split_once(':') else { return Err(bad(value, format!("{device:?} is not a device such as cuda:1"))) };
        if !matches!(kind, "cpu" | "cuda") || ordinal.parse::<usize>().is_err() {
            return Err(bad(value, format!("{device:?} is not a device such as cuda:1 or cpu:0")));
        }
        let delay = delay.trim();
        let (number, scale) = if let Some(n) = delay.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = delay.strip_suffix('s') {
            (n, 1.0)
        } else {
            return Err(bad(value, format!("delay {delay:?} needs a unit (s or ms)")));
        };
        let secs = number.trim().parse::<f64>().ok().map(|n| n * scale).filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_DELAY.as_secs_f64());
        let Some(secs) = secs else { return Err(bad(value, format!("delay {delay:?} is not a number of seconds in 0..={}", MAX_DELAY.as_secs()))) };
        let device = format!("{kind}:{}", ordinal.parse::<usize>().unwrap_or_default());
        if faults.iter().any(|f: &Fault| f.device == device) {
            return Err(bad(value, format!("{device} is named twice")));
        }
        faults.push(Fault { device, after: Duration::from_secs_f64(secs) });
    }
    Ok(faults)
}

/// [`VAR`] from the environment, parsed (empty when unset).
pub fn from_env() -> Result<Vec<Fault>> {
    match std::env::var(VAR) {
        Ok(v) => parse(&v),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidArgument(format!("{VAR} is not valid UTF-8"))),
    }
}

/// Each fault's device among `devices`, or an error naming the devices served.
pub fn resolve(faults: &[Fault], devices: &[Device]) -> Result<Vec<(Fault, Device)>> {
    faults
        .iter()
        .map(|f| match devices.iter().find(|d| name(d) == f.device) {
            Some(d) => Ok((f.clone(), d.clone())),
            None => Err(Error::InvalidArgument(format!("{VAR}: {} is not one of the devices served ({}); the fault drill can only take down a served device", f.device, devices.iter().map(name).collect::<Vec<_>>().join(", ")))),
        })
        .collect()
}

/// Start the timers: each device fails `after` from now. Returns at once.
pub fn arm(faults: Vec<(Fault, Device)>, log: &'static str) {
    for (f, d) in faults {
        eprintln!("{log}: {VAR}: fault drill armed: {} fails in {:?}", f.device, f.after);
        let name = f.device.clone();
        std::thread::Builder::new()
            .name(format!("fault-drill {}", f.device))
            .spawn(move || {
                std::thread::sleep(f.after);
                d.inject_fault(&format!("{VAR} drill: {} taken down {:?} after serving started", f.device, f.after));
                eprintln!("{log}: {VAR}: {} is now failing (fault drill)", f.device);
            })
            .map(drop)
            .unwrap_or_else(|e| eprintln!("{log}: {VAR}: could not start the drill timer for {name}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_delays() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("cuda:1@20s").unwrap(), vec![Fault { device: "cuda:1".into(), after: Duration::from_secs(20) }]);
        assert_eq!(parse(" cpu:1@500ms , cpu:0@1.5s").unwrap(), vec![Fault { device: "cpu:1".into(), after: Duration::from_millis(500) }, Fault { device: "cpu:0".into(), after: Duration::from_millis(1500) }]);
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        for v in ["cuda:1", "cuda:1@20", "cuda:1@-1s", "cuda:1@xs", "gpu:1@1s", "cuda@1s", "cuda:x@1s", "cuda:1@1e9s", "cuda:1@1s,cuda:1@2s", "cuda:1@NaNs"] {
            match parse(v) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(VAR) && m.contains("DEVICE@DELAY"), "{v}: {m}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_device_not_served_is_an_error() {
        let devices = Device::parse_many("cpu:0,1").unwrap();
        let ok = resolve(&parse("cpu:1@1s").unwrap(), &devices).unwrap();
        assert_eq!(ok[0].1.backend().ordinal(), 1);
        match resolve(&parse("cpu:2@1s").unwrap(), &devices) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("cpu:2") && m.contains("cpu:0, cpu:1"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(resolve(&parse("cuda:0@1s").unwrap(), &devices).is_err());
    }
}
