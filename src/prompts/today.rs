//! Today's prompt figures per station, reset when the store-local day changes.
//!
//! A prompt counts on the day it opened (see [`StationToday`]); resolutions of prompts opened on
//! an earlier day are left out, so completeness never exceeds 1.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::model::StationToday;
use crate::record::attribution::Outcome;

/// Counters of one station for one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Prompts opened.
    pub(crate) opened: u64,
    /// Of those, answered.
    pub(crate) answered: u64,
    /// Of those, skipped.
    pub(crate) skipped: u64,
    /// Of those, timed out.
    pub(crate) timeout: u64,
}

/// The figures of every station for the current day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Today {
    /// The store-local day counted.
    #[serde(with = "naive_day")]
    pub(crate) day: NaiveDate,
    /// Per station; stations appear on their first prompt of the day.
    pub(crate) stations: BTreeMap<String, Counts>,
}

impl Today {
    /// No figures yet for `day`.
    pub(crate) fn new(day: NaiveDate) -> Self {
        Today {
            day,
            stations: BTreeMap::new(),
        }
    }

    /// Starts a new day when `day` differs from the one counted; returns whether it did.
    pub(crate) fn roll(&mut self, day: NaiveDate) -> bool {
        if day == self.day {
            return false;
        }
        self.day = day;
        self.stations.clear();
        true
    }

    /// Counts a prompt opened on `opened_day` at `station`.
    pub(crate) fn opened(&mut self, station: &str, opened_day: NaiveDate) {
        if opened_day == self.day {
            self.counts(station).opened += 1;
        }
    }

    /// Counts the outcome of a prompt opened on `opened_day` at `station`.
    pub(crate) fn resolved(&mut self, station: &str, opened_day: NaiveDate, outcome: Outcome) {
        if opened_day != self.day {
            return;
        }
        let counts = self.counts(station);
        match outcome {
            Outcome::Answered => counts.answered += 1,
            Outcome::Skipped => counts.skipped += 1,
            Outcome::Timeout => counts.timeout += 1,
        }
    }

    /// The figures of one station (zeros when it had no prompt today).
    pub(crate) fn station(&self, station: &str) -> StationToday {
        let counts = self.stations.get(station).copied().unwrap_or_default();
        let resolved = counts.answered + counts.skipped + counts.timeout;
        StationToday {
            station: station.to_owned(),
            day: self.day,
            opened: counts.opened,
            answered: counts.answered,
            skipped: counts.skipped,
            timeout: counts.timeout,
            open: counts.opened.saturating_sub(resolved),
            completeness: (counts.opened > 0)
                .then(|| counts.answered as f64 / counts.opened as f64),
        }
    }

    /// The figures of every station that had a prompt today.
    pub(crate) fn all(&self) -> Vec<StationToday> {
        self.stations
            .keys()
            .map(|station| self.station(station))
            .collect()
    }

    fn counts(&mut self, station: &str) -> &mut Counts {
        self.stations.entry(station.to_owned()).or_default()
    }
}

/// Serde for a `NaiveDate` as `YYYY-MM-DD` (chrono's serde feature is not enabled).
pub(crate) mod naive_day {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(day: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&day.format("%Y-%m-%d"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveDate, D::Error> {
        let text = String::deserialize(deserializer)?;
        NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map_err(|error| serde::de::Error::custom(format!("bad date '{text}': {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).expect("date")
    }

    #[test]
    fn counts_by_opening_day_and_resets() {
        let mut today = Today::new(day(27));
        today.opened("till-1", day(27));
        today.opened("till-1", day(27));
        today.resolved("till-1", day(27), Outcome::Answered);
        let figures = today.station("till-1");
        assert_eq!((figures.opened, figures.answered, figures.open), (2, 1, 1));
        assert_eq!(figures.completeness, Some(0.5));
        assert_eq!(today.station("till-2").completeness, None);

        assert!(today.roll(day(28)));
        assert!(!today.roll(day(28)));
        // Yesterday's prompt closing today does not count.
        today.resolved("till-1", day(27), Outcome::Timeout);
        assert_eq!(
            today.station("till-1"),
            StationToday::empty("till-1", day(28))
        );
        assert!(today.all().is_empty());
    }
}
