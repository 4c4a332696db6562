//! `rate_limit = { limit = 20, per = "second", key = "tenant" }`: a declared task's fleet-wide
//! limit on its starts (docs/rate-limits.md), each mistake at its line like the rest of the file.

use super::fields::{self, Item, Table};
use super::mistakes::Found;
use crate::rate_limit::RateLimit;

const RATE_LIMIT_KEYS: &[&str] = &["limit", "per", "key"];

/// The most starts a limit may allow per second or minute.
const MAX_LIMIT: i64 = 100_000;

/// The `rate_limit` table of a `[[task]]`.
pub(super) fn read(item: &Item<'_>, found: &mut Found<'_>) -> Option<RateLimit> {
    let before = found.count();
    let table = Table::of(item, "rate_limit", found)?;
    table.only(RATE_LIMIT_KEYS, found);
    let limit = table
        .require("limit", found)
        .and_then(|n| fields::integer(n, "limit", 1..=MAX_LIMIT, found))
        .and_then(|n| u32::try_from(n).ok());
    let per = match table.get("per") {
        None => Some("second"),
        Some(per) => match fields::word(per, "per", found) {
            Some(word @ ("second" | "minute")) => Some(word),
            Some(other) => {
                found.at(
                    &per.span(),
                    format!("`per` must be \"second\" or \"minute\", not {other:?}"),
                );
                None
            }
            None => None,
        },
    };
    let key = match table.get("key") {
        None => Some(None),
        Some(key) => match fields::word(key, "key", found) {
            Some("tenant") => Some(Some(Key::Tenant)),
            Some(pointer) if pointer.starts_with('/') => Some(Some(Key::Input(pointer.to_owned()))),
            Some(other) => {
                found.at(
                    &key.span(),
                    format!(
                        "`key` must be \"tenant\" or a JSON pointer into the input such as \"/apiHost\", not {other:?}"
                    ),
                );
                None
            }
            None => None,
        },
    };
    if found.count() > before {
        return None;
    }
    let limit = match per? {
        "minute" => RateLimit::per_minute(limit?),
        _ => RateLimit::per_second(limit?),
    };
    Some(match key? {
        None => limit,
        Some(Key::Tenant) => limit.per_tenant(),
        Some(Key::Input(pointer)) => limit.per_input(pointer),
    })
}

enum Key {
    Tenant,
    Input(String),
}
