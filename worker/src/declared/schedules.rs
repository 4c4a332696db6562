//! `[[task.schedule]]`: a declared task's schedules (docs/schedules.md), each mistake at its
//! line like the rest of the file.

use super::fields::{self, Item, Table};
use super::mistakes::Found;
use crate::schedule::Schedule;
use toml::de::DeValue;

const SCHEDULE_KEYS: &[&str] = &[
    "name",
    "cron",
    "every",
    "timezone",
    "payload",
    "missed",
    "catch_up_limit",
];

/// The largest `catch_up_limit` a file may give.
const MAX_CATCH_UP: i64 = 10_000;

/// The `schedule` key of a `[[task]]`: a list of tables.
pub(super) fn read(item: &Item<'_>, found: &mut Found<'_>) -> Option<Vec<Schedule>> {
    let DeValue::Array(items) = item.get_ref() else {
        found.at(
            &item.span(),
            format!(
                "`schedule` must be [[task.schedule]] tables, not {}",
                item.get_ref().type_str()
            ),
        );
        return None;
    };
    let before = found.count();
    let schedules: Vec<Option<Schedule>> = items.iter().map(|item| one(item, found)).collect();
    if found.count() > before {
        return None;
    }
    schedules.into_iter().collect()
}

fn one(item: &Item<'_>, found: &mut Found<'_>) -> Option<Schedule> {
    let table = Table::of(item, "[[task.schedule]]", found)?;
    table.only(SCHEDULE_KEYS, found);
    let timing = match (table.get("cron"), table.get("every")) {
        (Some(cron), None) => fields::word(cron, "cron", found).and_then(|expr| {
            Schedule::cron(expr)
                .map_err(|e| found.at(&cron.span(), format!("`cron`: {e}")))
                .ok()
        }),
        (None, Some(every)) => fields::word(every, "every", found).and_then(|text| {
            Schedule::every(text)
                .map_err(|e| found.at(&every.span(), format!("`every`: {e}")))
                .ok()
        }),
        (Some(_), Some(every)) => {
            found.at(&every.span(), "give `cron` or `every`, not both");
            None
        }
        (None, None) => {
            found.at(
                table.span(),
                "missing key `cron` or `every` in [[task.schedule]]",
            );
            None
        }
    };
    let mut schedule = timing?;
    if let Some(zone) = table.get("timezone") {
        let name = fields::word(zone, "timezone", found)?;
        schedule = schedule
            .timezone(name)
            .map_err(|e| found.at(&zone.span(), format!("`timezone`: {e}")))
            .ok()?;
    }
    if let Some(payload) = table.get("payload") {
        let value = fields::json(payload, "payload", found)?;
        if !value.is_object() {
            found.at(&payload.span(), "`payload` must be a table (a JSON object)");
            return None;
        }
        schedule = schedule.payload(value);
    }
    if let Some(missed) = table.get("missed") {
        let text = fields::word(missed, "missed", found)?;
        let policy = text
            .parse()
            .map_err(|e| found.at(&missed.span(), format!("`missed`: {e}")))
            .ok()?;
        schedule = schedule.missed(policy);
    }
    if let Some(limit) = table.get("catch_up_limit") {
        let n = fields::integer(limit, "catch_up_limit", 0..=MAX_CATCH_UP, found)?;
        schedule = schedule.catch_up_limit(u32::try_from(n).ok()?);
    }
    if let Some(name) = table.get("name") {
        let text = fields::word(name, "name", found)?;
        if let Err(e) = warren_shared::schedule::validate_name(text) {
            found.at(&name.span(), format!("`name`: {e}"));
            return None;
        }
        schedule = schedule.named(text);
    }
    Some(schedule)
}
