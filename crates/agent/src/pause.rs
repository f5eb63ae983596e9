//! The user's pause: its length as people type it (`15m`, `1h 30m`,
//! `tomorrow`, `indefinitely`), read in this one place for the control
//! socket and everything that asks it, and the file that keeps it across
//! restarts.

use std::path::Path;
use std::time::Duration;

use crate::governor::{ManualPause, Pauses};

/// A pause length that cannot be used; the words say what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    #[error("{given:?} is not a pause length ({reason}); use e.g. 15m, 1h, tomorrow or indefinitely")]
    NotALength { given: String, reason: String },
    #[error("{given:?}: a pause must be longer than 0 and at most a year")]
    OutOfRange { given: String },
    #[error("cannot work out tomorrow's date: {0}")]
    NoTomorrow(String),
}

/// Longest pause: anything longer is surely a typo.
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// Reads a pause length: `15m`, `1h 30m`, `tomorrow` (until local midnight),
/// `indefinitely` (until resumed; also when no length is given).
pub fn parse(duration: Option<&str>, now: &jiff::Zoned) -> Result<ManualPause, PauseError> {
    let Some(d) = duration.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(ManualPause::UntilResumed);
    };
    match d {
        "indefinitely" | "forever" | "until-resumed" => Ok(ManualPause::UntilResumed),
        "tomorrow" => {
            let midnight =
                now.tomorrow().and_then(|t| t.start_of_day()).map_err(|e| PauseError::NoTomorrow(e.to_string()))?;
            Ok(ManualPause::Until { until_ms: midnight.timestamp().as_millisecond().max(0) as u64 })
        }
        _ => {
            let span = humantime::parse_duration(d)
                .map_err(|e| PauseError::NotALength { given: d.to_owned(), reason: e.to_string() })?;
            if span.is_zero() || span > LONGEST {
                return Err(PauseError::OutOfRange { given: d.to_owned() });
            }
            let until = now.timestamp().as_millisecond().max(0) as u64 + span.as_millis() as u64;
            Ok(ManualPause::Until { until_ms: until })
        }
    }
}

/// The pauses kept in `file`: each kind's pause, or (written by an older
/// agent) one pause of all work. Missing or unreadable: no pause (the user
/// can pause again).
pub fn load(file: &Path) -> Pauses {
    let Ok(bytes) = std::fs::read(file) else { return Pauses::default() };
    serde_json::from_slice(&bytes).or_else(|_| serde_json::from_slice(&bytes).map(Pauses::both)).unwrap_or_default()
}

/// Keeps `pauses` in `file` (atomically); a failure is logged, since the
/// pause itself still holds until the agent stops.
pub fn save(file: &Path, pauses: &Pauses) {
    let saved = serde_json::to_vec(pauses).expect("pauses serialise");
    if let Err(e) = crate::settings::write_atomically(file, &saved) {
        tracing::warn!(error = %e, "the pause will not survive a restart");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_lengths() {
        let now: jiff::Zoned = "2026-11-22T13:05:00+01:00[+01:00]".parse().unwrap();
        let t0 = now.timestamp().as_millisecond() as u64;
        assert_eq!(parse(None, &now), Ok(ManualPause::UntilResumed));
        assert_eq!(parse(Some("indefinitely"), &now), Ok(ManualPause::UntilResumed));
        assert_eq!(parse(Some("15m"), &now), Ok(ManualPause::Until { until_ms: t0 + 15 * 60_000 }));
        assert_eq!(parse(Some("1h"), &now), Ok(ManualPause::Until { until_ms: t0 + 3_600_000 }));
        let midnight: jiff::Zoned = "2026-11-23T00:00:00+01:00[+01:00]".parse().unwrap();
        assert_eq!(
            parse(Some("tomorrow"), &now),
            Ok(ManualPause::Until { until_ms: midnight.timestamp().as_millisecond() as u64 })
        );
        for bad in ["soon", "0s", "-5m", "400 days"] {
            assert!(parse(Some(bad), &now).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pause_file_survives_and_reads_an_older_agents() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pause.json");
        assert_eq!(load(&file), Pauses::default(), "no file: no pause");
        let mut pauses = Pauses::default();
        pauses.set(idlemesh_control::Scope::Gpu, ManualPause::UntilResumed);
        save(&file, &pauses);
        assert_eq!(load(&file), pauses);
        std::fs::write(&file, serde_json::to_vec(&ManualPause::Until { until_ms: 5 }).unwrap()).unwrap();
        assert_eq!(load(&file), Pauses::both(ManualPause::Until { until_ms: 5 }), "an older agent's one pause");
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(load(&file), Pauses::default());
    }
}
