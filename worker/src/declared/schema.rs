//! A declared task's input schema: a JSON Schema compiled once, when the file is read, and
//! checked against every payload before the run starts (through [`crate::Task::validate_input`]).
//! A payload it refuses is dead-lettered as `invalid_input` with the schema's own words.
//!
//! The schema is checked against its meta-schema when it is compiled, so a schema that could
//! never be right is a mistake of the file, not of every payload. References (`$ref`) stay
//! inside the schema: nothing is fetched, from the network or the disk, while tasks run.

use serde_json::Value;

/// At most this many schema errors are named in a dead letter's reason: enough to fix a
/// payload, without a reason the size of the payload.
const MAX_ERRORS_NAMED: usize = 5;

/// A compiled input schema.
pub(super) struct InputSchema(jsonschema::Validator);

impl InputSchema {
    /// Compiles `schema`; the error says where in the schema it is wrong.
    pub(super) fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema)
            .map(InputSchema)
            .map_err(|e| at(e.instance_path().as_str(), &e.to_string()))
    }

    /// `Ok` when `input` fits, else every way it does not (the first few).
    pub(super) fn check(&self, input: &Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .0
            .iter_errors(input)
            .map(|e| at(e.instance_path().as_str(), &e.to_string()))
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let mut reason = format!(
            "the input schema refuses it: {}",
            errors
                .iter()
                .take(MAX_ERRORS_NAMED)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        if errors.len() > MAX_ERRORS_NAMED {
            reason.push_str(&format!("; and {} more", errors.len() - MAX_ERRORS_NAMED));
        }
        Err(reason)
    }
}

/// An error with the JSON pointer of what it is about (nothing for the whole document).
fn at(pointer: &str, error: &str) -> String {
    if pointer.is_empty() {
        error.to_owned()
    } else {
        format!("at {pointer}: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url_schema() -> InputSchema {
        InputSchema::compile(&json!({
            "type": "object",
            "required": ["url"],
            "properties": { "url": { "type": "string" }, "size": { "type": "integer" } }
        }))
        .unwrap()
    }

    #[test]
    fn a_payload_that_fits_passes() {
        assert_eq!(url_schema().check(&json!({ "url": "https://x" })), Ok(()));
    }

    #[test]
    fn a_payload_that_does_not_fit_is_refused_with_every_reason_and_where() {
        let reason = url_schema().check(&json!({ "size": "big" })).unwrap_err();
        assert!(
            reason.starts_with("the input schema refuses it: "),
            "{reason}"
        );
        assert!(
            reason.contains("\"url\" is a required property"),
            "{reason}"
        );
        assert!(
            reason.contains("at /size: \"big\" is not of type \"integer\""),
            "{reason}"
        );
    }

    #[test]
    fn a_schema_that_breaks_its_meta_schema_does_not_compile() {
        let error = InputSchema::compile(&json!({ "properties": { "url": { "type": "strin" } } }))
            .err()
            .unwrap();
        assert!(error.contains("/properties/url/type"), "{error}");
    }

    #[test]
    fn a_reference_outside_the_schema_is_refused_when_it_is_compiled_not_fetched() {
        let error = InputSchema::compile(&json!({ "$ref": "https://127.0.0.1:1/schema.json" }))
            .err()
            .unwrap();
        assert!(error.contains("https://127.0.0.1:1/schema.json"), "{error}");
        assert!(
            InputSchema::compile(&json!({
                "$defs": { "id": { "type": "string" } },
                "properties": { "id": { "$ref": "#/$defs/id" } }
            }))
            .is_ok()
        );
    }

    #[test]
    fn a_reason_names_a_few_errors_and_counts_the_rest() {
        let schema = InputSchema::compile(&json!({
            "type": "array", "items": { "type": "integer" }
        }))
        .unwrap();
        let reason = schema
            .check(&json!(["a", "b", "c", "d", "e", "f", "g"]))
            .unwrap_err();
        assert!(reason.ends_with("; and 2 more"), "{reason}");
    }
}
