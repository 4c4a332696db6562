//! Message priorities, carried as lanes: a message marked `high` or `low` in the
//! `warren-priority` header goes to its task's lane queue of that priority (when the task has
//! lanes), and a replica starts work from the highest lane with something ready first.
//!
//! Lanes rather than broker priorities because RabbitMQ 3.x quorum queues have none (4.0 adds
//! two levels): a lane is an ordinary queue, so the same design works on every broker version
//! and queue type. The header is authoritative, so a publisher in any language sets only a
//! header; an absent or unknown value is `normal`, so a typo never loses a message.

use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How urgent a message is. Ordered: `High > Normal > Low`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Started after everything else that is ready (but never starved).
    Low,
    /// What a message without a priority gets.
    #[default]
    Normal,
    /// Started before normal and low work that is ready.
    High,
}

impl Priority {
    /// Every priority, highest first: the order a replica looks at its lanes.
    pub const HIGHEST_FIRST: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The header value (`high`, `normal`, `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The priority a message's headers ask for: `normal` when the header is absent, not text,
    /// or not one of the three values (the broker routes such a message to the normal lane too).
    pub fn of_headers(headers: Option<&FieldTable>) -> Priority {
        let value = headers.and_then(|h| h.inner().get(crate::contract::header::PRIORITY));
        let text = match value {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
            _ => None,
        };
        text.and_then(|t| t.parse().ok()).unwrap_or_default()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    /// Exactly the header values, lower case, as the broker's headers exchange matches them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "unknown priority {other:?} (expected high, normal or low)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn headers(value: AMQPValue) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(crate::contract::header::PRIORITY.into(), value);
        table
    }

    #[test]
    fn the_header_names_the_priority_and_anything_else_is_normal() {
        let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        assert_eq!(
            Priority::of_headers(Some(&headers(long("high")))),
            Priority::High
        );
        assert_eq!(
            Priority::of_headers(Some(&headers(AMQPValue::ShortString("low".into())))),
            Priority::Low
        );
        for odd in [long("HIGH"), long("urgent"), AMQPValue::LongLongInt(9)] {
            assert_eq!(Priority::of_headers(Some(&headers(odd))), Priority::Normal);
        }
        assert_eq!(Priority::of_headers(None), Priority::Normal);
    }

    #[test]
    fn priorities_order_and_parse() {
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        for p in Priority::HIGHEST_FIRST {
            assert_eq!(p.as_str().parse(), Ok(p));
        }
        assert!("urgent".parse::<Priority>().is_err());
    }
}
