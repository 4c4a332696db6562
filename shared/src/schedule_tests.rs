use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn slots(timing: &Timing, after: &str, n: usize) -> Vec<String> {
    timing
        .upcoming(utc(after), n)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect()
}

#[test]
fn a_five_field_cron_fires_on_whole_minutes_in_its_zone() {
    let timing = Timing::cron("0 9 * * *", "Europe/Paris").unwrap();
    // 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer.
    assert_eq!(
        slots(&timing, "2026-01-10T12:00:00Z", 2),
        ["2026-01-11T08:00:00+00:00", "2026-01-12T08:00:00+00:00"]
    );
    assert_eq!(
        slots(&timing, "2026-07-10T06:59:59Z", 1),
        ["2026-07-10T07:00:00+00:00"]
    );
}

#[test]
fn a_six_field_cron_has_seconds_first() {
    let timing = Timing::cron("*/20 * * * * *", "UTC").unwrap();
    assert_eq!(
        slots(&timing, "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-01T00:00:20+00:00",
            "2026-01-01T00:00:40+00:00",
            "2026-01-01T00:01:00+00:00",
            "2026-01-01T00:01:20+00:00"
        ]
    );
    let every_second = Timing::cron("* * * * * *", "UTC").unwrap();
    assert_eq!(
        slots(&every_second, "2026-01-01T00:00:00.500Z", 2),
        ["2026-01-01T00:00:01+00:00", "2026-01-01T00:00:02+00:00"]
    );
}

#[test]
fn names_ranges_lists_and_steps_parse() {
    let timing = Timing::cron("30 8-10/2 * JAN,mar MON-FRI", "UTC").unwrap();
    // 2026-03-02 is a Monday.
    assert_eq!(
        slots(&timing, "2026-03-01T00:00:00Z", 3),
        [
            "2026-03-02T08:30:00+00:00",
            "2026-03-02T10:30:00+00:00",
            "2026-03-03T08:30:00+00:00"
        ]
    );
}

#[test]
fn when_both_day_fields_are_restricted_either_matches() {
    // The 13th, and every Friday.
    let timing = Timing::cron("0 0 13 * 5", "UTC").unwrap();
    // 2026-02-06 and 2026-02-13 are Fridays; the 13th matches once.
    assert_eq!(
        slots(&timing, "2026-02-01T00:00:00Z", 3),
        [
            "2026-02-06T00:00:00+00:00",
            "2026-02-13T00:00:00+00:00",
            "2026-02-20T00:00:00+00:00"
        ]
    );
}

#[test]
fn sunday_is_zero_or_seven() {
    let zero = Timing::cron("0 0 * * 0", "UTC").unwrap();
    let seven = Timing::cron("0 0 * * 7", "UTC").unwrap();
    assert_eq!(
        slots(&zero, "2026-02-01T00:00:00Z", 2),
        slots(&seven, "2026-02-01T00:00:00Z", 2)
    );
}

#[test]
fn bad_expressions_and_zones_say_what_is_wrong_in_one_line() {
    for (expr, needle) in [
        ("0 9 * *", "expected 5 fields"),
        ("61 * * * *", "minutes: 61 is outside 0-59"),
        ("0 25 * * *", "hours: 25 is outside 0-23"),
        ("0 0 * FOO *", "month: \"FOO\" is not a number"),
        ("*/0 * * * *", "step"),
        ("0 10-8 * * *", "goes backwards"),
    ] {
        let err = Timing::cron(expr, "UTC").unwrap_err().to_string();
        assert!(err.contains(needle), "{expr}: {err}");
        assert!(!err.contains('\n'));
    }
    assert_eq!(
        Timing::cron("0 0 30 2 *", "UTC").unwrap_err(),
        ScheduleError::Never("0 0 30 2 *".into())
    );
    let err = Timing::cron("0 9 * * *", "Mars/Olympus").unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown time zone \"Mars/Olympus\"")
    );
}

#[test]
fn a_daily_job_in_the_spring_gap_fires_once_at_the_end_of_the_gap() {
    // Paris skips 02:00-03:00 local on 2026-03-29 (01:00 UTC).
    let timing = Timing::cron("30 2 * * *", "Europe/Paris").unwrap();
    assert_eq!(
        slots(&timing, "2026-03-27T12:00:00Z", 4),
        [
            "2026-03-28T01:30:00+00:00", // 02:30 CET
            "2026-03-29T01:00:00+00:00", // 03:00 CEST, the first instant after the gap
            "2026-03-30T00:30:00+00:00", // 02:30 CEST
            "2026-03-31T00:30:00+00:00"
        ]
    );
}

#[test]
fn a_daily_job_in_the_repeated_hour_fires_once_at_its_first_occurrence() {
    // Paris repeats 02:00-03:00 local on 2026-10-25 (CEST until 01:00 UTC, then CET).
    let timing = Timing::cron("30 2 * * *", "Europe/Paris").unwrap();
    assert_eq!(
        slots(&timing, "2026-10-23T12:00:00Z", 3),
        [
            "2026-10-24T00:30:00+00:00", // 02:30 CEST
            "2026-10-25T00:30:00+00:00", // 02:30 CEST, the first of the two
            "2026-10-26T01:30:00+00:00"  // 02:30 CET
        ]
    );
    // Asked from within the second 02:30, the next slot is the next day's.
    assert_eq!(
        slots(&timing, "2026-10-25T01:30:00Z", 1),
        ["2026-10-26T01:30:00+00:00"]
    );
}

#[test]
fn new_york_transitions_fire_a_daily_job_once_each_day() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 2026-11-01: 02:00 EDT falls back to 01:00 EST.
    let timing = Timing::cron("30 2 * * *", "America/New_York").unwrap();
    assert_eq!(
        slots(&timing, "2026-03-07T12:00:00Z", 3),
        [
            "2026-03-08T07:00:00+00:00", // 03:00 EDT, the end of the gap
            "2026-03-09T06:30:00+00:00", // 02:30 EDT
            "2026-03-10T06:30:00+00:00"
        ]
    );
    let one_thirty = Timing::cron("30 1 * * *", "America/New_York").unwrap();
    assert_eq!(
        slots(&one_thirty, "2026-10-31T12:00:00Z", 3),
        [
            "2026-11-01T05:30:00+00:00", // 01:30 EDT, the first of the two
            "2026-11-02T06:30:00+00:00", // 01:30 EST
            "2026-11-03T06:30:00+00:00"
        ]
    );
}

#[test]
fn an_hourly_job_skips_neither_nor_doubles_an_hour_across_transitions() {
    let timing = Timing::cron("0 * * * *", "Europe/Paris").unwrap();
    // Spring: 01:00 CET (00:00Z), then 03:00 CEST (01:00Z): the missing 02:00 is the gap's end.
    assert_eq!(
        slots(&timing, "2026-03-28T23:30:00Z", 3),
        [
            "2026-03-29T00:00:00+00:00",
            "2026-03-29T01:00:00+00:00",
            "2026-03-29T02:00:00+00:00"
        ]
    );
    // Autumn: 02:00 CEST (00:00Z) fires, the repeated 02:00 CET (01:00Z) does not.
    assert_eq!(
        slots(&timing, "2026-10-24T23:30:00Z", 3),
        [
            "2026-10-25T00:00:00+00:00",
            "2026-10-25T02:00:00+00:00",
            "2026-10-25T03:00:00+00:00"
        ]
    );
}

#[test]
fn intervals_are_aligned_to_the_epoch_whatever_the_zone() {
    let timing = Timing::every("5m").unwrap();
    assert_eq!(
        slots(&timing, "2026-01-01T00:07:13Z", 2),
        ["2026-01-01T00:10:00+00:00", "2026-01-01T00:15:00+00:00"]
    );
    assert_eq!(
        Timing::every("1h30m").unwrap(),
        Timing::Every { seconds: 5400 }
    );
    assert_eq!(Timing::every("90").unwrap(), Timing::Every { seconds: 90 });
    for bad in ["0s", "5 parsecs", "m", "-3"] {
        assert!(Timing::every(bad).is_err(), "{bad}");
    }
}

#[test]
fn on_time_slots_fire_whatever_the_policy() {
    let timing = Timing::every("1s").unwrap();
    for missed in [Missed::Skip, Missed::Latest, Missed::All] {
        let due = timing.due(
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:00:02.300Z"),
            missed,
            10,
        );
        assert_eq!(due.fire.len(), 3, "{missed}");
        assert_eq!(due.skipped, 0);
        assert_eq!(due.next, Some(utc("2026-01-01T00:00:03Z")));
    }
}

#[test]
fn after_downtime_skip_fires_none_of_the_missed_slots() {
    let timing = Timing::cron("0 * * * *", "UTC").unwrap();
    let due = timing.due(
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-01T05:30:00Z"),
        Missed::Skip,
        10,
    );
    assert!(due.fire.is_empty());
    assert_eq!(due.skipped, 6);
    assert_eq!(due.next, Some(utc("2026-01-01T06:00:00Z")));
}

#[test]
fn after_downtime_latest_fires_the_latest_missed_slot_once() {
    let timing = Timing::cron("0 * * * *", "UTC").unwrap();
    let due = timing.due(
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-01T05:30:00Z"),
        Missed::Latest,
        10,
    );
    assert_eq!(due.fire, [utc("2026-01-01T05:00:00Z")]);
    assert_eq!(due.skipped, 5);
}

#[test]
fn after_downtime_all_fires_the_latest_missed_slots_up_to_the_limit() {
    let timing = Timing::cron("0 * * * *", "UTC").unwrap();
    let due = timing.due(
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-01T05:30:00Z"),
        Missed::All,
        3,
    );
    assert_eq!(
        due.fire,
        [
            utc("2026-01-01T03:00:00Z"),
            utc("2026-01-01T04:00:00Z"),
            utc("2026-01-01T05:00:00Z")
        ]
    );
    assert_eq!(due.skipped, 3);
}

#[test]
fn a_very_long_outage_of_a_one_second_schedule_is_bounded() {
    let timing = Timing::every("1s").unwrap();
    let due = timing.due(
        utc("2026-01-01T00:00:00Z"),
        utc("2026-01-03T00:00:00Z"),
        Missed::Latest,
        10,
    );
    // The on-time minute fires; the rest is skipped.
    assert_eq!(due.fire.len(), 60);
    assert!(due.skipped >= 100_000);
    assert_eq!(due.next, Some(utc("2026-01-03T00:00:01Z")));
}

#[test]
fn missed_policies_parse_from_their_names() {
    assert_eq!("skip".parse::<Missed>().unwrap(), Missed::Skip);
    assert_eq!("latest".parse::<Missed>().unwrap(), Missed::Latest);
    assert_eq!("all".parse::<Missed>().unwrap(), Missed::All);
    assert!("sometimes".parse::<Missed>().is_err());
    assert_eq!(Missed::default(), Missed::Latest);
}

#[test]
fn a_run_tells_its_slot_from_its_message_id() {
    let slot = utc("2026-03-29T07:00:00Z");
    let id = crate::store::schedules::message_id("reports/daily", slot);
    assert_eq!(id, "schedule/reports/daily/2026-03-29T07:00:00Z");
    assert_eq!(slot_of_message_id(&id), Some(slot));
    let long = "n".repeat(MAX_NAME_LEN);
    let precise = utc("2026-03-29T07:00:00.123456789Z");
    let id = crate::store::schedules::message_id(&long, precise);
    assert_eq!(slot_of_message_id(&id), Some(precise));
    assert_eq!(slot_of_message_id("0190f0c8-aaaa"), None);
    assert!(validate_name(&long).is_ok());
    assert!(validate_name(&format!("{long}n")).is_err());
    assert!(validate_name("two words").is_err());
}
