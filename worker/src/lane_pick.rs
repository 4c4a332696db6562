//! Which lane a free run slot takes its next delivery from: the highest lane with a delivery
//! ready, except that a lower lane passed over too many times in a row gets the next pick.
//! High work starts first; normal and low work keep moving under any sustained high load.
//!
//! A lane is "passed over" when it had a delivery ready and a higher lane was picked instead.
//! Once normal has been passed over [`NORMAL_PATIENCE`] times in a row it gets one pick; low
//! waits [`LOW_PATIENCE`] picks. So with every lane always busy, out of 14 starts about 10 are
//! high, 2 normal and 1-2 low; with only high and normal busy, 1 start in 5 is normal.

use warren_shared::priority::Priority;

/// Picks of a higher lane a ready normal delivery waits through before it gets one.
pub(crate) const NORMAL_PATIENCE: u32 = 4;

/// Picks of a higher lane a ready low delivery waits through before it gets one.
pub(crate) const LOW_PATIENCE: u32 = 8;

/// The lane-picking rule of one task's consumer. Starts with no lane owed anything.
#[derive(Debug, Default)]
pub(crate) struct LanePicker {
    /// How many picks in a row each lane (normal, low) had a delivery ready and was passed over.
    passed_over: [u32; 2],
}

impl LanePicker {
    /// The lane to take from among those with a delivery ready (`None` when none is), and the
    /// record of the pick for the rule.
    pub(crate) fn pick(&mut self, ready: impl Fn(Priority) -> bool) -> Option<Priority> {
        let owed = [Priority::Normal, Priority::Low]
            .into_iter()
            .find(|&lane| ready(lane) && self.count(lane) >= patience(lane));
        let chosen = owed.or_else(|| Priority::HIGHEST_FIRST.into_iter().find(|&l| ready(l)))?;
        for lane in [Priority::Normal, Priority::Low] {
            let counter = &mut self.passed_over[index(lane)];
            *counter = if lane == chosen || !ready(lane) {
                0
            } else if lane < chosen {
                counter.saturating_add(1)
            } else {
                // Ready, but a lower lane was owed this pick: not passed over by a higher one.
                *counter
            };
        }
        Some(chosen)
    }

    fn count(&self, lane: Priority) -> u32 {
        self.passed_over[index(lane)]
    }
}

fn patience(lane: Priority) -> u32 {
    match lane {
        Priority::Low => LOW_PATIENCE,
        _ => NORMAL_PATIENCE,
    }
}

fn index(lane: Priority) -> usize {
    match lane {
        Priority::Low => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Low, Normal};

    /// `picks` picks with the lanes in `busy` always ready.
    fn run(busy: &[Priority], picks: usize) -> Vec<Priority> {
        let mut picker = LanePicker::default();
        (0..picks)
            .filter_map(|_| picker.pick(|lane| busy.contains(&lane)))
            .collect()
    }

    fn share(picks: &[Priority], lane: Priority) -> usize {
        picks.iter().filter(|&&p| p == lane).count()
    }

    #[test]
    fn the_highest_ready_lane_goes_first() {
        let mut picker = LanePicker::default();
        assert_eq!(picker.pick(|_| true), Some(High));
        assert_eq!(picker.pick(|l| l != High), Some(Normal));
        assert_eq!(picker.pick(|l| l == Low), Some(Low));
        assert_eq!(picker.pick(|_| false), None);
    }

    #[test]
    fn a_lone_lane_gets_every_pick() {
        for lane in [High, Normal, Low] {
            assert_eq!(share(&run(&[lane], 100), lane), 100);
        }
    }

    #[test]
    fn normal_work_gets_one_pick_in_five_under_sustained_high_load() {
        let picks = run(&[High, Normal], 100);
        assert_eq!(share(&picks, Normal), 20);
        assert_eq!(
            &picks[..5],
            [High, High, High, High, Normal],
            "normal waits its patience, not longer"
        );
    }

    #[test]
    fn low_work_progresses_under_sustained_high_and_normal_load() {
        let picks = run(&[High, Normal, Low], 140);
        let low = share(&picks, Low);
        let normal = share(&picks, Normal);
        assert!(low >= 10, "low starved: {low} of 140");
        assert!(
            normal >= low,
            "normal {normal} should not get less than low {low}"
        );
        assert!(share(&picks, High) > normal + low, "high keeps most picks");
    }

    #[test]
    fn a_lane_that_empties_is_owed_nothing_when_it_fills_again() {
        let mut picker = LanePicker::default();
        for _ in 0..3 {
            assert_eq!(picker.pick(|_| true), Some(High));
        }
        // Normal empties: its wait starts over.
        assert_eq!(picker.pick(|l| l == High), Some(High));
        for _ in 0..NORMAL_PATIENCE {
            assert_eq!(picker.pick(|l| l != Low), Some(High));
        }
        assert_eq!(picker.pick(|l| l != Low), Some(Normal));
    }
}
