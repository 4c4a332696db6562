//! Reading the values of a parsed TOML document, each kept with its place in the file, so that
//! a value of the wrong type, an unknown key or a missing one is a mistake at its own line,
//! and reading goes on after it.

use super::mistakes::Found;
use serde::de::{DeserializeOwned, IntoDeserializer};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A value and where it is.
pub(super) type Item<'i> = Spanned<DeValue<'i>>;

/// A table of the file, with the place that stands for it when a key is missing (its header,
/// or its opening brace).
#[derive(Clone)]
pub(super) struct Table<'a, 'i> {
    entries: &'a DeTable<'i>,
    span: Range<usize>,
    /// What the table is, in the words of the file (`[[task]]`, `[task.retry]`).
    what: &'static str,
}

impl<'a, 'i> Table<'a, 'i> {
    /// `item` as a table named `what`; a mistake when it is something else.
    pub(super) fn of(
        item: &'a Item<'i>,
        what: &'static str,
        found: &mut Found<'_>,
    ) -> Option<Self> {
        match item.get_ref() {
            DeValue::Table(entries) => Some(Table {
                entries,
                span: item.span(),
                what,
            }),
            other => {
                found.at(
                    &item.span(),
                    format!("{what} must be a table, not {}", other.type_str()),
                );
                None
            }
        }
    }

    /// The whole document.
    pub(super) fn document(document: &'a Spanned<DeTable<'i>>) -> Self {
        Table {
            entries: document.get_ref(),
            span: document.span(),
            what: "the file",
        }
    }

    /// Where the table is.
    pub(super) fn span(&self) -> &Range<usize> {
        &self.span
    }

    /// The value of `key`, if the table has it.
    pub(super) fn get(&self, key: &str) -> Option<&'a Item<'i>> {
        self.entries.get(key)
    }

    /// The value of `key`; a mistake when it is missing.
    pub(super) fn require(&self, key: &str, found: &mut Found<'_>) -> Option<&'a Item<'i>> {
        let item = self.get(key);
        if item.is_none() {
            found.at(&self.span, format!("missing key `{key}` in {}", self.what));
        }
        item
    }

    /// A mistake for each key that is not one of `known`.
    pub(super) fn only(&self, known: &[&str], found: &mut Found<'_>) {
        for (key, _) in self.entries.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                found.at(
                    &key.span(),
                    format!(
                        "unknown key `{}` in {} (known keys: {})",
                        key.get_ref(),
                        self.what,
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// The keys other than `taken`, read as a `T` (a step kind's own configuration, whose keys
    /// its type knows). Each key `T` refuses is a mistake; the others are read again without
    /// it, so that every mistake is found, not only the first.
    pub(super) fn rest_as<T: DeserializeOwned>(
        &self,
        taken: &[&str],
        found: &mut Found<'_>,
    ) -> Option<T> {
        let mut rest: DeTable<'i> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                let name: &str = key.get_ref();
                !taken.contains(&name)
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let mut faultless = true;
        // Each round drops one key, so this ends.
        for _ in 0..=rest.len() {
            let table = Spanned::new(self.span.clone(), DeValue::Table(rest.clone()));
            let error = match T::deserialize(table.into_deserializer()) {
                Ok(config) => return faultless.then_some(config),
                Err(error) => error,
            };
            faultless = false;
            let at = error.span().unwrap_or_else(|| self.span.clone());
            found.at(&at, in_our_words(error.message()));
            let within = |span: Range<usize>| span.start <= at.start && at.end <= span.end;
            let culprit = rest
                .iter()
                .find(|(key, value)| within(key.span()) || within(value.span()))
                .map(|(key, _)| key.clone());
            match culprit {
                Some(key) => {
                    rest.remove(&key);
                }
                None => return None,
            }
        }
        None
    }
}

/// A serde message in the words of this file format: its fields are keys.
fn in_our_words(message: &str) -> String {
    message
        .replacen("unknown field", "unknown key", 1)
        .replacen("missing field", "missing key", 1)
}

/// A string; a mistake when `item` is something else.
pub(super) fn string<'a>(item: &'a Item<'_>, key: &str, found: &mut Found<'_>) -> Option<&'a str> {
    match item.get_ref() {
        DeValue::String(text) => Some(text),
        other => {
            found.at(
                &item.span(),
                format!("`{key}` must be a string, not {}", other.type_str()),
            );
            None
        }
    }
}

/// A string that is not empty.
pub(super) fn word<'a>(item: &'a Item<'_>, key: &str, found: &mut Found<'_>) -> Option<&'a str> {
    let text = string(item, key, found)?;
    if text.trim().is_empty() {
        found.at(&item.span(), format!("`{key}` must not be empty"));
        return None;
    }
    Some(text)
}

/// A duration written as people write them (`30s`, `2m`, `1h 30m`).
pub(super) fn duration(item: &Item<'_>, key: &str, found: &mut Found<'_>) -> Option<Duration> {
    let text = string(item, key, found)?;
    match humantime::parse_duration(text) {
        Ok(duration) => Some(duration),
        Err(e) => {
            found.at(
                &item.span(),
                format!("`{key}`: {text:?} is not a duration (such as 30s, 2m, 1h 30m): {e}"),
            );
            None
        }
    }
}

/// A duration longer than zero and at most `max`.
pub(super) fn positive_duration(
    item: &Item<'_>,
    key: &str,
    max: Duration,
    found: &mut Found<'_>,
) -> Option<Duration> {
    let duration = self::duration(item, key, found)?;
    if duration.is_zero() || duration > max {
        found.at(
            &item.span(),
            format!(
                "`{key}` must be longer than zero and at most {}",
                humantime::format_duration(max)
            ),
        );
        return None;
    }
    Some(duration)
}

/// A whole number within `range`.
pub(super) fn integer(
    item: &Item<'_>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    found: &mut Found<'_>,
) -> Option<i64> {
    let number = match item.get_ref() {
        DeValue::Integer(_) => typed::<i64>(item),
        _ => None,
    };
    match number {
        Some(n) if range.contains(&n) => Some(n),
        _ => {
            found.at(
                &item.span(),
                format!(
                    "`{key}` must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }
}

/// A number (whole or not) within `range`.
pub(super) fn number(
    item: &Item<'_>,
    key: &str,
    range: std::ops::RangeInclusive<f64>,
    found: &mut Found<'_>,
) -> Option<f64> {
    let number = match item.get_ref() {
        DeValue::Integer(_) | DeValue::Float(_) => typed::<f64>(item),
        _ => None,
    };
    match number {
        Some(n) if range.contains(&n) => Some(n),
        _ => {
            found.at(
                &item.span(),
                format!(
                    "`{key}` must be a number from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }
}

/// `item` as a `T`, if it is one.
fn typed<T: DeserializeOwned>(item: &Item<'_>) -> Option<T> {
    T::deserialize(item.clone().into_deserializer()).ok()
}

/// `true` or `false`.
pub(super) fn boolean(item: &Item<'_>, key: &str, found: &mut Found<'_>) -> Option<bool> {
    let value = item.get_ref().as_bool();
    if value.is_none() {
        found.at(&item.span(), format!("`{key}` must be true or false"));
    }
    value
}

/// Any value, as JSON (an inline JSON Schema).
pub(super) fn json(item: &Item<'_>, key: &str, found: &mut Found<'_>) -> Option<serde_json::Value> {
    match serde::Deserialize::deserialize(item.clone().into_deserializer()) {
        Ok(value) => Some(value),
        Err(e) => {
            let e: toml::de::Error = e;
            found.at(&item.span(), format!("`{key}`: {}", e.message()));
            None
        }
    }
}
