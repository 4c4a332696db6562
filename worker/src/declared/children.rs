//! Declared steps that start child runs: `trigger` (one child, waited for) and `fan_out` (a
//! child per item of a list, at most `limit` at once, joined).
//!
//! What a child gets is named by a JSON pointer (RFC 6901) into the document
//! `{"input": <the run's input>, "outputs": {<step>: <its output>}}`, checked when the file is
//! read (it must point into the input or into the output of a step before this one) and
//! resolved when the step runs. A pointer that reads through the output of an earlier child
//! that did not succeed fails the step with `child_failed`, naming that child and its error:
//! the real reason, not a "nothing there" further down the chain.

use crate::children::{ChildRun, Children};
use crate::step::{StepContext, StepDef, StepError, StepOutcome, step};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The code of a step that reads the output of an earlier child that did not succeed.
pub(super) const CHILD_FAILED: &str = "child_failed";

/// The code of a step whose pointer finds no child input (nothing there, or not an object), or
/// no list of items.
pub(super) const INVALID_CHILD: &str = "invalid_child";

/// How an earlier step started children, which decides the shape of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Started {
    /// `trigger`: the output is the child's outcome.
    One,
    /// `fan_out`: the output is the join, `{"children": [outcome, ...], ...}`.
    Many,
}

/// A step before the one being read, as a pointer may name it.
#[derive(Debug, Clone)]
pub(super) struct Earlier {
    pub(super) name: String,
    pub(super) started: Option<Started>,
}

/// A JSON pointer into `{"input": ..., "outputs": {...}}`, checked against the steps before
/// the one that holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pointer {
    text: String,
    tokens: Vec<String>,
    /// How the step it reads (`/outputs/STEP/...`) started children, if it did.
    through: Option<Started>,
}

impl Pointer {
    /// `text` as a pointer of the step whose earlier steps are `earlier`; `Err` says why not,
    /// in words for the key `key`.
    pub(super) fn parse(text: &str, key: &str, earlier: &[Earlier]) -> Result<Pointer, String> {
        let example = "such as \"/input\" or \"/outputs/STEP/output\"";
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{key}` must be a JSON pointer (RFC 6901) {example}, not {text:?}"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|token| unescape(token).ok_or(token))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|token| {
                format!("`{key}`: {token:?} in {text:?} has a `~` that is neither `~0` nor `~1`")
            })?;
        let through = match tokens.first().map(String::as_str) {
            Some("input") => None,
            Some("outputs") => {
                let Some(step) = tokens.get(1) else {
                    return Err(format!(
                        "`{key}`: {text:?} names no step: write /outputs/STEP"
                    ));
                };
                let Some(found) = earlier.iter().find(|e| &e.name == step) else {
                    let before = if earlier.is_empty() {
                        "there is no step before it".to_owned()
                    } else {
                        let names: Vec<&str> = earlier.iter().map(|e| e.name.as_str()).collect();
                        format!("the steps before it: {}", names.join(", "))
                    };
                    return Err(format!(
                        "`{key}`: {text:?} reads the output of `{step}`, which is not a step before this one ({before})"
                    ));
                };
                found.started
            }
            _ => {
                return Err(format!(
                    "`{key}`: {text:?} points into neither /input (the run's input) nor /outputs/STEP (the output of a step before this one)"
                ));
            }
        };
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
            through,
        })
    }

    /// The pointer that reads the run's whole input.
    pub(super) fn input() -> Pointer {
        Pointer {
            text: "/input".to_owned(),
            tokens: vec!["input".to_owned()],
            through: None,
        }
    }

    /// What the pointer names in the running step's document. `Err` (not retryable) when it
    /// reads through the output of a child that did not succeed (`child_failed`), or names
    /// nothing (`invalid_child`).
    fn resolve<'v>(
        &self,
        key: &str,
        input: &'v Value,
        outputs: &'v BTreeMap<String, Value>,
    ) -> Result<&'v Value, StepError> {
        if let Some(failed) = self.failed_child(outputs) {
            return Err(failed);
        }
        let (mut at, skip) = match self.tokens.first().map(String::as_str) {
            Some("input") => (input, 1),
            _ => {
                let step = self.tokens.get(1).map_or("", String::as_str);
                let output = outputs.get(step).ok_or_else(|| {
                    StepError::fatal(
                        INVALID_CHILD,
                        format!(
                            "`{key}` {:?} reads step `{step}`, which has no output",
                            self.text
                        ),
                    )
                })?;
                (output, 2)
            }
        };
        for (i, token) in self.tokens.iter().enumerate().skip(skip) {
            let next = match at {
                Value::Object(fields) => fields.get(token),
                Value::Array(items) => index(token).and_then(|i| items.get(i)),
                _ => None,
            };
            at = next.ok_or_else(|| {
                let reached: Vec<String> = self.tokens[..i]
                    .iter()
                    .map(|t| t.replace('~', "~0").replace('/', "~1"))
                    .collect();
                StepError::fatal(
                    INVALID_CHILD,
                    format!(
                        "`{key}` {:?} points at nothing: /{} ({}) has no {token:?}",
                        self.text,
                        reached.join("/"),
                        kind_of(at)
                    ),
                )
            })?;
        }
        Ok(at)
    }

    /// The failure of the earlier child whose output the pointer reads through, when that child
    /// did not succeed.
    fn failed_child(&self, outputs: &BTreeMap<String, Value>) -> Option<StepError> {
        let token = |i: usize| self.tokens.get(i).map(String::as_str);
        let step = token(1)?;
        let outcome = match self.through? {
            Started::One if token(2) == Some("output") => outputs.get(step)?,
            Started::Many if token(2) == Some("children") && token(4) == Some("output") => {
                let position = index(token(3)?)?;
                outputs.get(step)?.get("children")?.get(position)?
            }
            Started::One | Started::Many => return None,
        };
        let status = outcome.get("status").and_then(Value::as_str).unwrap_or("?");
        if status == "succeeded" {
            return None;
        }
        let what = match status {
            "dead" => "is dead".to_owned(),
            "cancelled" => "was cancelled".to_owned(),
            "halted" => format!(
                "halted ({})",
                outcome
                    .get("outcome")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
            other => format!("had not ended when the wait timed out ({other})"),
        };
        let error = outcome
            .get("error")
            .map(|e| {
                let field = |name: &str| e.get(name).and_then(Value::as_str).unwrap_or("");
                format!(": {}: {}", field("code"), field("message"))
            })
            .unwrap_or_default();
        let field = |name: &str| outcome.get(name).and_then(Value::as_str).unwrap_or("?");
        Some(StepError::fatal(
            CHILD_FAILED,
            format!(
                "{:?} reads the output of child run {} of task {} (started by step `{step}`), which {what}{error}",
                self.text,
                field("run_id"),
                field("task"),
            ),
        ))
    }
}

/// A token as an array index (RFC 6901: digits, no leading zero).
fn index(token: &str) -> Option<usize> {
    let leading_zero = token.len() > 1 && token.starts_with('0');
    if leading_zero || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// A reference token with `~1` and `~0` undone; `None` for any other `~`.
fn unescape(token: &str) -> Option<String> {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A `trigger` step: one run of `task` with the object `input` names, waited for.
#[derive(Debug, Clone)]
pub(super) struct Trigger {
    pub(super) task: String,
    pub(super) input: Pointer,
    pub(super) timeout: Option<Duration>,
}

/// A `fan_out` step: a run of `task` per item of the list `items` names.
#[derive(Debug, Clone)]
pub(super) struct FanOut {
    pub(super) task: String,
    pub(super) items: Pointer,
    pub(super) limit: Option<u32>,
    pub(super) timeout: Option<Duration>,
}

impl Trigger {
    fn children(&self, ctx: &StepContext<Value>) -> Result<Children, StepError> {
        let input = self.input.resolve("input", ctx.input(), ctx.outputs())?;
        if !input.is_object() {
            return Err(StepError::fatal(
                INVALID_CHILD,
                format!(
                    "`input` {:?} is {}: a child's input must be a JSON object",
                    self.input.text,
                    kind_of(input)
                ),
            ));
        }
        let children = Children::one(ChildRun::new(&self.task, input)?);
        Ok(match self.timeout {
            Some(timeout) => children.timeout(timeout),
            None => children,
        })
    }
}

impl FanOut {
    fn children(&self, ctx: &StepContext<Value>) -> Result<Children, StepError> {
        let items = self.items.resolve("items", ctx.input(), ctx.outputs())?;
        let Value::Array(items) = items else {
            return Err(StepError::fatal(
                INVALID_CHILD,
                format!(
                    "`items` {:?} is {}, not a list",
                    self.items.text,
                    kind_of(items)
                ),
            ));
        };
        // An object is a child's input as it is; anything else is wrapped, so that a list of
        // ids fans out without a step to reshape it.
        let inputs = items.iter().map(|item| match item {
            Value::Object(_) => Cow::Borrowed(item),
            other => Cow::Owned(json!({ "item": other })),
        });
        let mut children = Children::each(&self.task, inputs)?;
        if let Some(limit) = self.limit {
            children = children.at_most(limit);
        }
        if let Some(timeout) = self.timeout {
            children = children.timeout(timeout);
        }
        Ok(children)
    }
}

/// The pipeline step `name` of a `trigger`.
pub(super) fn trigger_step(name: &str, trigger: Trigger) -> StepDef<Value> {
    let trigger = Arc::new(trigger);
    step(name, move |ctx: StepContext<Value>| {
        let trigger = Arc::clone(&trigger);
        async move { Ok(StepOutcome::WaitForChildren(trigger.children(&ctx)?)) }
    })
}

/// The pipeline step `name` of a `fan_out`.
pub(super) fn fan_out_step(name: &str, fan_out: FanOut) -> StepDef<Value> {
    let fan_out = Arc::new(fan_out);
    step(name, move |ctx: StepContext<Value>| {
        let fan_out = Arc::clone(&fan_out);
        async move { Ok(StepOutcome::WaitForChildren(fan_out.children(&ctx)?)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn earlier() -> Vec<Earlier> {
        vec![
            Earlier {
                name: "prepare".into(),
                started: None,
            },
            Earlier {
                name: "transcribe".into(),
                started: Some(Started::One),
            },
            Earlier {
                name: "each".into(),
                started: Some(Started::Many),
            },
        ]
    }

    fn pointer(text: &str) -> Pointer {
        Pointer::parse(text, "input", &earlier()).unwrap()
    }

    fn outputs() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("prepare".to_owned(), json!({ "a~b": { "x/y": [10, 20] } })),
            (
                "transcribe".to_owned(),
                json!({ "run_id": "r-1", "task": "story.transcribe", "status": "dead",
                        "error": { "code": "not_found", "message": "no such story" } }),
            ),
            (
                "each".to_owned(),
                json!({ "children": [
                    { "run_id": "r-2", "task": "t", "status": "succeeded", "output": { "n": 1 } },
                    { "run_id": "r-3", "task": "t", "status": "halted", "outcome": "SKIPPED",
                      "output": {} },
                ] }),
            ),
        ])
    }

    #[test]
    fn a_pointer_reads_the_input_or_an_earlier_output_with_escapes_and_indexes() {
        let input = json!({ "story": { "text": "hi" } });
        let outputs = outputs();
        let resolve = |text: &str| pointer(text).resolve("input", &input, &outputs).cloned();
        assert_eq!(resolve("/input"), Ok(input.clone()));
        assert_eq!(resolve("/input/story"), Ok(json!({ "text": "hi" })));
        assert_eq!(resolve("/outputs/prepare/a~0b/x~1y/1"), Ok(json!(20)));
        assert_eq!(
            resolve("/outputs/each/children/0/output"),
            Ok(json!({ "n": 1 }))
        );
        // Reading a failed child's error, rather than its output, is allowed.
        assert_eq!(
            resolve("/outputs/transcribe/error/code"),
            Ok(json!("not_found"))
        );
    }

    #[test]
    fn a_pointer_that_finds_nothing_says_where_it_stopped() {
        let err = pointer("/outputs/prepare/a~0b/z")
            .resolve("input", &json!({}), &outputs())
            .unwrap_err();
        assert_eq!(err.code, INVALID_CHILD);
        assert!(
            err.message
                .contains("points at nothing: /outputs/prepare/a~0b (an object) has no \"z\""),
            "{}",
            err.message
        );
        let err = pointer("/outputs/prepare/a~0b/x~1y/01")
            .resolve("input", &json!({}), &outputs())
            .unwrap_err();
        assert!(err.message.contains("has no \"01\""), "{}", err.message);
    }

    #[test]
    fn reading_through_the_output_of_a_child_that_did_not_succeed_fails_with_child_failed() {
        let err = pointer("/outputs/transcribe/output/sentences")
            .resolve("input", &json!({}), &outputs())
            .unwrap_err();
        assert_eq!(err.code, CHILD_FAILED);
        assert_eq!(err.class, crate::ErrorClass::Fatal);
        assert_eq!(
            err.message,
            "\"/outputs/transcribe/output/sentences\" reads the output of child run r-1 of task story.transcribe (started by step `transcribe`), which is dead: not_found: no such story"
        );
        let err = pointer("/outputs/each/children/1/output")
            .resolve("input", &json!({}), &outputs())
            .unwrap_err();
        assert_eq!(err.code, CHILD_FAILED);
        assert!(err.message.contains("run r-3"), "{}", err.message);
        assert!(err.message.contains("halted (SKIPPED)"), "{}", err.message);
    }

    #[test]
    fn a_pointer_must_name_the_input_or_a_step_before_its_own() {
        let mistake = |text: &str| Pointer::parse(text, "input", &earlier()).unwrap_err();
        assert!(mistake("input/story").contains("must be a JSON pointer (RFC 6901)"));
        assert!(mistake("/input/a~2").contains("neither `~0` nor `~1`"));
        assert!(mistake("/story").contains("points into neither /input"));
        assert!(mistake("").contains("must be a JSON pointer"));
        assert!(mistake("/outputs").contains("names no step"));
        assert_eq!(
            mistake("/outputs/later/output"),
            "`input`: \"/outputs/later/output\" reads the output of `later`, which is not a step before this one (the steps before it: prepare, transcribe, each)"
        );
        assert!(
            Pointer::parse("/outputs/x", "items", &[])
                .unwrap_err()
                .contains("there is no step before it")
        );
    }
}
