//! The wall clock as event time, read once per tick and carried forward by the
//! monotonic reading the owner takes after every poll.

use std::time::{Duration, Instant, SystemTime};

use crate::core::EventTime;

/// The current wall-clock time.
pub fn wall_clock() -> EventTime {
    millis(since_epoch())
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

fn millis(since_epoch: Duration) -> EventTime {
    EventTime::from_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock as of a monotonic instant: the system clock read once per tick,
/// carried forward by the monotonic reading the owner loop takes after every poll, so
/// a message costs no second clock read. A step of the system clock shows at the next
/// tick; between ticks the two clocks drift apart by microseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct WallClock {
    pub anchor: Instant,
    anchor_since_epoch: Duration,
}

impl WallClock {
    pub fn read() -> Self {
        WallClock {
            anchor: Instant::now(),
            anchor_since_epoch: since_epoch(),
        }
    }

    /// The wall-clock time at `instant` (taken at or after the anchor).
    pub fn at(self, instant: Instant) -> EventTime {
        millis(self.anchor_since_epoch + instant.saturating_duration_since(self.anchor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_carried_forward_by_the_monotonic_reading() {
        let wall = WallClock {
            anchor: Instant::now(),
            anchor_since_epoch: Duration::from_micros(1_700_000_000_000_999),
        };
        assert_eq!(wall.at(wall.anchor), EventTime::from_millis(1_700_000_000_000));
        // Sub-millisecond parts add up before truncating: .999 ms + 1.5 ms.
        let later = wall.anchor + Duration::from_micros(1_500);
        assert_eq!(wall.at(later), EventTime::from_millis(1_700_000_000_002));
        let an_hour_later = wall.anchor + Duration::from_secs(3_600);
        assert_eq!(wall.at(an_hour_later), EventTime::from_millis(1_700_003_600_000));
    }
}
