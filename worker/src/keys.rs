//! What a fleet-wide limit counts: the task as a whole, each tenant, or each value of the input
//! at a JSON pointer. Rate limits ([`crate::rate_limit`]) and concurrency keys
//! ([`crate::concurrency_key`]) name their keys the same way.

use serde_json::Value;
use serde_json::value::RawValue;

/// What one limit counts runs of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFrom {
    /// The task as a whole.
    Task,
    /// Each tenant (`warren-tenant`) on its own; runs without one share a key.
    Tenant,
    /// Each value of the input at this JSON pointer (e.g. `/apiHost`) on its own.
    Input(String),
}

impl KeyFrom {
    /// The key a run of `task` counts against.
    pub(crate) fn key(&self, task: &str, tenant: Option<&str>, input: Option<&RawValue>) -> String {
        match self {
            KeyFrom::Task => task.to_owned(),
            KeyFrom::Tenant => format!("{task}#tenant={}", tenant.unwrap_or("")),
            KeyFrom::Input(pointer) => {
                let value = input
                    .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
                    .and_then(|v| v.pointer(pointer).cloned())
                    .unwrap_or(Value::Null);
                let value = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                format!("{task}#{pointer}={value}")
            }
        }
    }

    /// How `warren tasks` says what is counted: nothing for the task, ` per tenant`,
    /// ` per /pointer`.
    pub(crate) fn suffix(&self) -> String {
        match self {
            KeyFrom::Task => String::new(),
            KeyFrom::Tenant => " per tenant".into(),
            KeyFrom::Input(pointer) => format!(" per {pointer}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_task_and_what_is_counted() {
        let input = RawValue::from_string(r#"{"api":{"host":"a.example"}}"#.into()).unwrap();
        assert_eq!(KeyFrom::Task.key("t", Some("x"), Some(&input)), "t");
        assert_eq!(
            KeyFrom::Tenant.key("t", Some("acme"), None),
            "t#tenant=acme"
        );
        let host = KeyFrom::Input("/api/host".into());
        assert_eq!(host.key("t", None, Some(&input)), "t#/api/host=a.example");
        assert_eq!(host.key("t", None, None), "t#/api/host=null");
    }
}
