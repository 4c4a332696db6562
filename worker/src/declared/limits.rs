//! A declared task's fleet-wide limits, each mistake at its line like the rest of the file:
//! `rate_limit = { limit = 20, per = "second", key = "tenant" }` on its starts
//! (docs/rate-limits.md), and `concurrency_key = { limit = 5, key = "tenant" }` on its runs of
//! one key at once (docs/concurrency-keys.md).

use super::fields::{self, Item, Table};
use super::mistakes::Found;
use crate::concurrency_key::ConcurrencyKey;
use crate::keys::KeyFrom;
use crate::rate_limit::RateLimit;

const RATE_LIMIT_KEYS: &[&str] = &["limit", "per", "key"];

/// The most a limit may allow: starts per second or minute, or runs of one key at once.
const MAX_LIMIT: i64 = 100_000;

/// The `rate_limit` table of a `[[task]]`.
pub(super) fn read(item: &Item<'_>, found: &mut Found<'_>) -> Option<RateLimit> {
    let before = found.count();
    let table = Table::of(item, "rate_limit", found)?;
    table.only(RATE_LIMIT_KEYS, found);
    let limit = read_limit(&table, found);
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
        None => Some(KeyFrom::Task),
        Some(key) => read_key(key, found),
    };
    if found.count() > before {
        return None;
    }
    let limit = match per? {
        "minute" => RateLimit::per_minute(limit?),
        _ => RateLimit::per_second(limit?),
    };
    Some(match key? {
        KeyFrom::Task => limit,
        KeyFrom::Tenant => limit.per_tenant(),
        KeyFrom::Input(pointer) => limit.per_input(pointer),
    })
}

const CONCURRENCY_KEY_KEYS: &[&str] = &["limit", "key"];

/// The `concurrency_key` table of a `[[task]]`: `key` is required (a limit on the whole task
/// is `key = "task"`).
pub(super) fn read_concurrency_key(
    item: &Item<'_>,
    found: &mut Found<'_>,
) -> Option<ConcurrencyKey> {
    let before = found.count();
    let table = Table::of(item, "concurrency_key", found)?;
    table.only(CONCURRENCY_KEY_KEYS, found);
    let limit = read_limit(&table, found);
    let key = table
        .require("key", found)
        .and_then(|key| read_key(key, found));
    if found.count() > before {
        return None;
    }
    Some(match key? {
        KeyFrom::Task => ConcurrencyKey::whole_task(limit?),
        KeyFrom::Tenant => ConcurrencyKey::per_tenant(limit?),
        KeyFrom::Input(pointer) => ConcurrencyKey::per_input(pointer, limit?),
    })
}

/// `limit`, required: a whole number from 1 to [`MAX_LIMIT`].
fn read_limit(table: &Table<'_, '_>, found: &mut Found<'_>) -> Option<u32> {
    table
        .require("limit", found)
        .and_then(|n| fields::integer(n, "limit", 1..=MAX_LIMIT, found))
        .and_then(|n| u32::try_from(n).ok())
}

/// `key = "task" | "tenant" | "/json/pointer"`.
fn read_key(key: &Item<'_>, found: &mut Found<'_>) -> Option<KeyFrom> {
    match fields::word(key, "key", found)? {
        "task" => Some(KeyFrom::Task),
        "tenant" => Some(KeyFrom::Tenant),
        pointer if pointer.starts_with('/') => Some(KeyFrom::Input(pointer.to_owned())),
        other => {
            found.at(
                &key.span(),
                format!(
                    "`key` must be \"task\", \"tenant\" or a JSON pointer into the input such as \"/apiHost\", not {other:?}"
                ),
            );
            None
        }
    }
}
