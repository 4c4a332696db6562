//! Reading a task file into tasks: every key checked, every mistake collected with its place,
//! and tasks built only from a file without any.

use super::children::{self, Earlier, FanOut, Pointer, Started, Trigger};
use super::failure;
use super::fields::{self, Item, Table};
use super::mistakes::{Found, Mistakes};
use super::schema::InputSchema;
use crate::step::{StepDef, wait_step};
use crate::steps::command::{CommandStep, CommandStepConfig};
use crate::steps::http::{HttpStep, HttpStepConfig};
use crate::steps::{ExternalStep, external};
use crate::task::Task;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use warren_shared::retry::RetryPolicy;

/// How long an HTTP step may take unless it says otherwise.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a command step may take unless it says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The longest duration anything in a file may have: the longest wait the broker holds.
const LONGEST: Duration = Duration::from_secs(warren_shared::topology::MAX_DELAY_SECONDS);

/// The most runs of a task a replica may run at once (as `--concurrency` allows).
const MAX_CONCURRENCY: i64 = 100_000;

/// The most attempts a retry policy may give.
const MAX_ATTEMPTS: i64 = 1_000;

const TASK_KEYS: &[&str] = &[
    "name",
    "events",
    "concurrency",
    "max_duration",
    "input_schema",
    "input_schema_file",
    "retry",
    "step",
    "on_failure",
    "schedule",
    "rate_limit",
    "concurrency_key",
    "priority_lanes",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "min_delay", "max_delay", "factor", "jitter"];
/// The keys every HTTP or command step may have; the others are its kind's.
const STEP_KEYS: &[&str] = &["name", "kind", "stage", "timeout", "retry", "rate_limit"];
const WAIT_KEYS: &[&str] = &["name", "kind", "stage", "duration"];
const TRIGGER_KEYS: &[&str] = &["name", "kind", "stage", "task", "input", "timeout"];
const FAN_OUT_KEYS: &[&str] = &["name", "kind", "stage", "task", "items", "limit", "timeout"];
const ON_FAILURE_KEYS: &[&str] = &["kind", "timeout"];

/// The kinds of step a file may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Command,
    Wait,
    Trigger,
    FanOut,
}

impl Kind {
    /// How a step of this kind starts children, if it does.
    fn starts(self) -> Option<Started> {
        match self {
            Kind::Trigger => Some(Started::One),
            Kind::FanOut => Some(Started::Many),
            Kind::Http | Kind::Command | Kind::Wait => None,
        }
    }
}

/// Reads `source`, the text of the task file `file`, into its tasks; `taken` are the names of
/// tasks the program already has.
pub(super) fn read(
    source: &str,
    file: &Path,
    taken: &[&str],
    purpose: Purpose,
    environment: &Environment<'_>,
) -> Result<Vec<Task<Value>>, Mistakes> {
    let name = file.display().to_string();
    let mut reader = Reader {
        found: Found::new(source),
        taken,
        purpose,
        environment,
        // Absolute, so that a command's program still resolves in its own working directory.
        base: std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_default(),
    };
    let (document, errors) = DeTable::parse_recoverable(source);
    if !errors.is_empty() {
        // A file that is not TOML: what was recovered of it would only add false mistakes.
        for error in errors {
            reader
                .found
                .at(&error.span().unwrap_or(0..0), error.message().trim());
        }
        return reader.found.finish(&name).map(|()| Vec::new());
    }
    let tasks = reader.document(&document);
    reader.found.finish(&name)?;
    Ok(tasks)
}

/// What a file is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Tasks a replica runs: each HTTP or command step is built, which may look at the
    /// environment (an HTTP step's signing secret).
    Run,
    /// Only what the file says, wherever it is checked (`warren tasks validate` on a laptop or
    /// in CI, without the replicas' secrets): the tasks are not to be run.
    Check,
}

/// Where the variables a step's settings name (an HTTP step's signing secret) are read.
pub(super) type Environment<'e> = dyn Fn(&str) -> Option<std::ffi::OsString> + 'e;

struct Reader<'s, 't> {
    found: Found<'s>,
    purpose: Purpose,
    environment: &'t Environment<'t>,
    /// Names of the program's own tasks, which a declared one may not take.
    taken: &'t [&'t str],
    /// The task file's directory: what relative paths in it are relative to.
    base: PathBuf,
}

impl Reader<'_, '_> {
    fn document(&mut self, document: &toml::Spanned<DeTable<'_>>) -> Vec<Task<Value>> {
        let file = Table::document(document);
        file.only(&["task"], &mut self.found);
        let Some(tasks) = file.get("task") else {
            self.found
                .at(&(0..0), "no task declared: add a [[task]] table");
            return Vec::new();
        };
        let Some(tasks) = self.tables(tasks, "task", "[[task]]") else {
            return Vec::new();
        };
        let mut names = HashMap::new();
        tasks
            .iter()
            .filter_map(|task| self.task(task, &mut names))
            .collect()
    }

    /// `item` as a list of tables, the `[[what]]` of the file.
    fn tables<'a, 'i>(
        &mut self,
        item: &'a Item<'i>,
        key: &str,
        what: &str,
    ) -> Option<&'a [Item<'i>]> {
        match item.get_ref() {
            DeValue::Array(items) if !items.is_empty() => Some(items),
            DeValue::Array(_) => {
                self.found.at(
                    &item.span(),
                    format!("`{key}` is empty: add a {what} table"),
                );
                None
            }
            other => {
                self.found.at(
                    &item.span(),
                    format!("`{key}` must be {what} tables, not {}", other.type_str()),
                );
                None
            }
        }
    }

    /// One `[[task]]`; `names` has the tasks before it, and where they are.
    fn task(&mut self, item: &Item<'_>, names: &mut HashMap<String, usize>) -> Option<Task<Value>> {
        let before = self.found.count();
        let table = Table::of(item, "[[task]]", &mut self.found)?;
        table.only(TASK_KEYS, &mut self.found);
        let item = table.require("name", &mut self.found);
        let name = item.and_then(|name| self.event_name(name, "name"));
        if let (Some(name), Some(item)) = (name, item) {
            self.unique(names, name, item, "task");
            if self.taken.contains(&name) {
                self.found.at(
                    &item.span(),
                    format!("task `{name}` is built into this program: give the declared one another name"),
                );
            }
        }
        let events = table.get("events").and_then(|events| self.events(events));
        let concurrency = table
            .get("concurrency")
            .and_then(|c| fields::integer(c, "concurrency", 1..=MAX_CONCURRENCY, &mut self.found));
        let max_duration = table
            .get("max_duration")
            .and_then(|d| fields::positive_duration(d, "max_duration", LONGEST, &mut self.found));
        let schema = self.input_schema(&table);
        let retry = table
            .get("retry")
            .and_then(|retry| self.retry(retry, "[task.retry]"));
        let steps = self.steps(&table);
        let on_failure = table
            .get("on_failure")
            .and_then(|handler| self.on_failure(handler));
        let schedules = table
            .get("schedule")
            .and_then(|item| super::schedules::read(item, &mut self.found));
        let rate_limit = table
            .get("rate_limit")
            .and_then(|item| super::limits::read(item, &mut self.found));
        let concurrency_key = table
            .get("concurrency_key")
            .and_then(|item| super::limits::read_concurrency_key(item, &mut self.found));
        let priority_lanes = table
            .get("priority_lanes")
            .and_then(|item| fields::boolean(item, "priority_lanes", &mut self.found));
        if self.found.count() > before {
            return None;
        }

        let mut task = Task::<Value>::new(name?);
        for event in events.unwrap_or_default() {
            task = task.on(event);
        }
        if let Some(concurrency) = concurrency {
            task = task.concurrency(usize::try_from(concurrency).ok()?);
        }
        if let Some(max_duration) = max_duration {
            task = task.max_duration(max_duration);
        }
        if let Some(retry) = retry {
            task = task.retry(retry);
        }
        if let Some(schema) = schema {
            task = task.validate_input(move |input| schema.check(input));
        }
        if let Some((handler, timeout)) = on_failure {
            task = task.on_failure(failure::handler(handler, timeout));
        }
        for step in steps {
            task = task.step(step);
        }
        for schedule in schedules.unwrap_or_default() {
            task = task.schedule(schedule);
        }
        if let Some(limit) = rate_limit {
            task = task.rate_limit(limit);
        }
        if let Some(key) = concurrency_key {
            task = task.concurrency_key(key);
        }
        if priority_lanes == Some(true) {
            task = task.priority_lanes();
        }
        Some(task)
    }

    /// A mistake when `name` was seen before in `names` (where the first one is said).
    fn unique(
        &mut self,
        names: &mut HashMap<String, usize>,
        name: &str,
        item: &Item<'_>,
        what: &str,
    ) {
        match names.get(name) {
            Some(&first) => {
                let line = self.found.line_of(first);
                self.found.at(
                    &item.span(),
                    format!("duplicate {what} name `{name}` (first declared at line {line})"),
                );
            }
            None => {
                names.insert(name.to_owned(), item.span().start);
            }
        }
    }

    /// A name the protocol allows as an event (task names are too: a task's own name is its
    /// default event, and names its queues).
    fn event_name<'a>(&mut self, item: &'a Item<'_>, key: &str) -> Option<&'a str> {
        let name = fields::string(item, key, &mut self.found)?;
        match warren_shared::contract::validate_event_name(name) {
            Ok(()) => Some(name),
            Err(e) => {
                self.found.at(&item.span(), format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn events(&mut self, item: &Item<'_>) -> Option<Vec<String>> {
        let DeValue::Array(list) = item.get_ref() else {
            self.found.at(
                &item.span(),
                format!(
                    "`events` must be a list of event names, not {}",
                    item.get_ref().type_str()
                ),
            );
            return None;
        };
        if list.is_empty() {
            self.found.at(
                &item.span(),
                "`events` is empty: name at least one event, or leave `events` out for the task's own name",
            );
            return None;
        }
        let events: Vec<Option<String>> = list
            .iter()
            .map(|event| self.event_name(event, "events").map(str::to_owned))
            .collect();
        events.into_iter().collect()
    }

    /// The task's input schema, inline or in a file next to the task file.
    fn input_schema(&mut self, table: &Table<'_, '_>) -> Option<InputSchema> {
        let (schema, item, what) = match (table.get("input_schema"), table.get("input_schema_file"))
        {
            (None, None) => return None,
            (Some(_), Some(file)) => {
                self.found.at(
                    &file.span(),
                    "give `input_schema` or `input_schema_file`, not both",
                );
                return None;
            }
            (Some(inline), None) => (
                fields::json(inline, "input_schema", &mut self.found)?,
                inline,
                "`input_schema`".to_owned(),
            ),
            (None, Some(file)) => {
                let name = fields::word(file, "input_schema_file", &mut self.found)?;
                let path = self.base.join(name);
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) => {
                        self.found.at(
                            &file.span(),
                            format!("cannot read the schema file {}: {e}", path.display()),
                        );
                        return None;
                    }
                };
                match serde_json::from_str(&text) {
                    Ok(schema) => (schema, file, format!("the schema file {name}")),
                    Err(e) => {
                        self.found.at(
                            &file.span(),
                            format!("the schema file {name} is not JSON: {e}"),
                        );
                        return None;
                    }
                }
            }
        };
        match InputSchema::compile(&schema) {
            Ok(schema) => Some(schema),
            Err(e) => {
                self.found.at(
                    &item.span(),
                    format!("{what} is not a valid JSON Schema: {e}"),
                );
                None
            }
        }
    }

    /// A retry policy; what it leaves out is the default's (3 attempts, 1s to 30s, factor 2,
    /// jitter).
    fn retry(&mut self, item: &Item<'_>, what: &'static str) -> Option<RetryPolicy> {
        let before = self.found.count();
        let table = Table::of(item, what, &mut self.found)?;
        table.only(RETRY_KEYS, &mut self.found);
        let found = &mut self.found;
        let mut policy = RetryPolicy::default();
        if let Some(n) = table
            .get("max_attempts")
            .and_then(|n| fields::integer(n, "max_attempts", 1..=MAX_ATTEMPTS, found))
        {
            policy.max_attempts = u32::try_from(n).ok()?;
        }
        if let Some(delay) = table
            .get("min_delay")
            .and_then(|d| fields::duration(d, "min_delay", found))
        {
            policy.min_delay = delay;
        }
        if let Some(delay) = table
            .get("max_delay")
            .and_then(|d| fields::positive_duration(d, "max_delay", LONGEST, found))
        {
            policy.max_delay = delay;
        }
        if let Some(factor) = table
            .get("factor")
            .and_then(|f| fields::number(f, "factor", 1.0..=100.0, found))
        {
            policy.factor = factor;
        }
        if let Some(jitter) = table
            .get("jitter")
            .and_then(|j| fields::boolean(j, "jitter", found))
        {
            policy.jitter = jitter;
        }
        if found.count() == before && policy.min_delay > policy.max_delay {
            let at = table
                .get("min_delay")
                .or(table.get("max_delay"))
                .map_or_else(|| table.span().clone(), Item::span);
            found.at(
                &at,
                format!(
                    "`min_delay` ({}) is longer than `max_delay` ({})",
                    humantime::format_duration(policy.min_delay),
                    humantime::format_duration(policy.max_delay)
                ),
            );
        }
        (found.count() == before).then_some(policy)
    }

    /// The pipeline: the task's `[[task.step]]` tables, in order.
    fn steps(&mut self, task: &Table<'_, '_>) -> Vec<StepDef<Value>> {
        let Some(item) = task.get("step") else {
            self.found
                .at(task.span(), "a task needs steps: add a [[task.step]] table");
            return Vec::new();
        };
        let Some(steps) = self.tables(item, "step", "[[task.step]]") else {
            return Vec::new();
        };
        let mut names = HashMap::new();
        let mut earlier = Vec::new();
        steps
            .iter()
            .filter_map(|step| self.step(step, &mut names, &mut earlier))
            .collect()
    }

    /// One `[[task.step]]`; `earlier` are the steps before it (and it is added to them), whose
    /// outputs a `trigger` or `fan_out` step may read.
    fn step(
        &mut self,
        item: &Item<'_>,
        names: &mut HashMap<String, usize>,
        earlier: &mut Vec<Earlier>,
    ) -> Option<StepDef<Value>> {
        let before = self.found.count();
        let table = Table::of(item, "[[task.step]]", &mut self.found)?;
        let item = table.require("name", &mut self.found);
        let name = item.and_then(|name| fields::word(name, "name", &mut self.found));
        if let (Some(name), Some(item)) = (name, item) {
            self.unique(names, name, item, "step");
        }
        let kind = table
            .require("kind", &mut self.found)
            .and_then(|kind| self.kind(kind));
        let step = self.step_of_kind(&table, name, kind, earlier);
        if let (Some(name), Some(kind)) = (name, kind) {
            earlier.push(Earlier {
                name: name.to_owned(),
                started: kind.starts(),
            });
        }
        if self.found.count() > before {
            return None;
        }
        step
    }

    /// The step `table` declares, of kind `kind` (`None` when the name or the kind is unknown,
    /// whose mistake is already found, or when a key of its kind is wrong).
    fn step_of_kind(
        &mut self,
        table: &Table<'_, '_>,
        name: Option<&str>,
        kind: Option<Kind>,
        earlier: &[Earlier],
    ) -> Option<StepDef<Value>> {
        let stage = table
            .get("stage")
            .and_then(|stage| fields::word(stage, "stage", &mut self.found));
        let step = match kind? {
            Kind::Trigger => {
                table.only(TRIGGER_KEYS, &mut self.found);
                let trigger = self.trigger(table, earlier);
                children::trigger_step(name?, trigger?)
            }
            Kind::FanOut => {
                table.only(FAN_OUT_KEYS, &mut self.found);
                let fan_out = self.fan_out(table, earlier);
                children::fan_out_step(name?, fan_out?)
            }
            Kind::Wait => {
                table.only(WAIT_KEYS, &mut self.found);
                let duration = table.require("duration", &mut self.found).and_then(|d| {
                    fields::positive_duration(d, "duration", LONGEST, &mut self.found)
                });
                wait_step(name?, duration?)
            }
            kind @ (Kind::Http | Kind::Command) => {
                let timeout = table.get("timeout").and_then(|t| {
                    fields::positive_duration(t, "timeout", LONGEST, &mut self.found)
                });
                let retry = table
                    .get("retry")
                    .and_then(|retry| self.retry(retry, "[task.step.retry]"));
                let rate_limit = table
                    .get("rate_limit")
                    .and_then(|item| super::limits::read(item, &mut self.found));
                let call = self.external(kind, table, STEP_KEYS);
                let mut step =
                    external(name?, call?).timeout(timeout.unwrap_or(default_timeout(kind)));
                if let Some(retry) = retry {
                    step = step.retry(retry);
                }
                if let Some(limit) = rate_limit {
                    step = step.rate_limit(limit);
                }
                step
            }
        };
        Some(match stage {
            Some(stage) => step.stage(stage),
            None => step,
        })
    }

    /// A `trigger` step's child: its task, the pointer to its input, and the wait's timeout.
    fn trigger(&mut self, table: &Table<'_, '_>, earlier: &[Earlier]) -> Option<Trigger> {
        let task = self.child_task(table);
        let input = match table.get("input") {
            Some(item) => self.pointer(item, "input", earlier),
            None => Some(Pointer::input()),
        };
        let timeout = self.wait_timeout(table);
        Some(Trigger {
            task: task?,
            input: input?,
            timeout: timeout?,
        })
    }

    /// A `fan_out` step's children: their task, the pointer to the list of their inputs, how
    /// many at once and the wait's timeout.
    fn fan_out(&mut self, table: &Table<'_, '_>, earlier: &[Earlier]) -> Option<FanOut> {
        let task = self.child_task(table);
        let items = table
            .require("items", &mut self.found)
            .and_then(|item| self.pointer(item, "items", earlier));
        let limit = match table.get("limit") {
            Some(item) => fields::integer(item, "limit", 1..=MAX_CONCURRENCY, &mut self.found)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some),
            None => Some(None),
        };
        let timeout = self.wait_timeout(table);
        Some(FanOut {
            task: task?,
            items: items?,
            limit: limit?,
            timeout: timeout?,
        })
    }

    /// The task a `trigger` or `fan_out` step starts. Any task name: one this file does not
    /// declare may be another file's, or built in, so an unknown one fails the step when it
    /// runs (`unknown_task`), not the file.
    fn child_task(&mut self, table: &Table<'_, '_>) -> Option<String> {
        let item = table.require("task", &mut self.found)?;
        self.event_name(item, "task").map(str::to_owned)
    }

    /// The optional `timeout` of a wait for children (`Some(None)` when there is none).
    fn wait_timeout(&mut self, table: &Table<'_, '_>) -> Option<Option<Duration>> {
        match table.get("timeout") {
            Some(item) => {
                fields::positive_duration(item, "timeout", LONGEST, &mut self.found).map(Some)
            }
            None => Some(None),
        }
    }

    fn pointer(&mut self, item: &Item<'_>, key: &str, earlier: &[Earlier]) -> Option<Pointer> {
        let text = fields::string(item, key, &mut self.found)?;
        match Pointer::parse(text, key, earlier) {
            Ok(pointer) => Some(pointer),
            Err(mistake) => {
                self.found.at(&item.span(), mistake);
                None
            }
        }
    }

    /// The failure handler, and its timeout.
    fn on_failure(&mut self, item: &Item<'_>) -> Option<(Arc<dyn ExternalStep>, Duration)> {
        let table = Table::of(item, "[task.on_failure]", &mut self.found)?;
        let kind = table
            .require("kind", &mut self.found)
            .and_then(|kind| self.kind(kind));
        let timeout = table
            .get("timeout")
            .and_then(|t| fields::positive_duration(t, "timeout", LONGEST, &mut self.found));
        let refused = match kind? {
            Kind::Wait => Some("there is nothing to wait for"),
            Kind::Trigger | Kind::FanOut => Some("a run that died starts no children"),
            Kind::Http | Kind::Command => None,
        };
        match refused {
            Some(why) => {
                let at = table
                    .get("kind")
                    .map_or_else(|| table.span().clone(), Item::span);
                self.found.at(
                    &at,
                    format!("a failure handler is an `http` or `command` step: {why}"),
                );
                None
            }
            None => {
                let kind = kind?;
                let call = self.external(kind, &table, ON_FAILURE_KEYS)?;
                Some((call, timeout.unwrap_or(default_timeout(kind))))
            }
        }
    }

    fn kind(&mut self, item: &Item<'_>) -> Option<Kind> {
        match fields::string(item, "kind", &mut self.found)? {
            "http" => Some(Kind::Http),
            "command" => Some(Kind::Command),
            "wait" => Some(Kind::Wait),
            "trigger" => Some(Kind::Trigger),
            "fan_out" => Some(Kind::FanOut),
            other => {
                self.found.at(
                    &item.span(),
                    format!(
                        "unknown step kind `{other}` (known kinds: http, command, wait, trigger, fan_out)"
                    ),
                );
                None
            }
        }
    }

    /// The HTTP or command step that `table`'s keys other than `taken` configure.
    fn external(
        &mut self,
        kind: Kind,
        table: &Table<'_, '_>,
        taken: &[&str],
    ) -> Option<Arc<dyn ExternalStep>> {
        let built = match (kind, self.purpose) {
            (Kind::Http, Purpose::Run) => {
                let mut config: HttpStepConfig = table.rest_as(taken, &mut self.found)?;
                // Like a command's program: relative to the task file.
                config.ca_file = config.ca_file.map(|file| self.base.join(file));
                HttpStep::with_secret_from(config, self.environment)
                    .map(|step| Arc::new(step) as Arc<dyn ExternalStep>)
            }
            (Kind::Command, Purpose::Run) => {
                let mut config: CommandStepConfig = table.rest_as(taken, &mut self.found)?;
                config.program = resolve_program(&self.base, config.program);
                CommandStep::new(config).map(|step| Arc::new(step) as Arc<dyn ExternalStep>)
            }
            (Kind::Http, Purpose::Check) => {
                // Everything but the secret, which lives in the replicas' environment.
                let config: HttpStepConfig = table.rest_as(taken, &mut self.found)?;
                config
                    .check()
                    .map(|_| Arc::new(Unbuilt) as Arc<dyn ExternalStep>)
            }
            (Kind::Command, Purpose::Check) => {
                let config: CommandStepConfig = table.rest_as(taken, &mut self.found)?;
                config
                    .check()
                    .map(|()| Arc::new(Unbuilt) as Arc<dyn ExternalStep>)
            }
            (Kind::Wait | Kind::Trigger | Kind::FanOut, _) => return None,
        };
        match built {
            Ok(step) => Some(step),
            Err(e) => {
                self.found.at(table.span(), e.to_string());
                None
            }
        }
    }
}

/// The step of a file read only to be checked ([`Purpose::Check`]): never run.
struct Unbuilt;

impl ExternalStep for Unbuilt {
    fn call(
        &self,
        _request: crate::steps::StepRequest,
        _log: crate::run_log::StepLog,
    ) -> futures::future::BoxFuture<'static, Result<crate::steps::StepReply, crate::StepError>>
    {
        Box::pin(async {
            Err(crate::StepError::fatal(
                "internal",
                "a task file read only to be checked was run",
            ))
        })
    }
}

/// A program named by a relative path (`./bin/thumbnail`, `scripts/x.sh`) is found in `base`,
/// the task file's directory; a bare name (`ffmpeg`) is looked up in `PATH`.
fn resolve_program(base: &Path, program: String) -> String {
    let path = Path::new(&program);
    if program.contains('/') && path.is_relative() {
        base.join(path).display().to_string()
    } else {
        program
    }
}

fn default_timeout(kind: Kind) -> Duration {
    match kind {
        Kind::Command => DEFAULT_COMMAND_TIMEOUT,
        Kind::Http | Kind::Wait | Kind::Trigger | Kind::FanOut => DEFAULT_HTTP_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_program_path_is_found_next_to_the_task_file_and_a_bare_name_in_path() {
        let base = Path::new("/srv/tasks");
        assert_eq!(
            resolve_program(base, "./bin/x".into()),
            "/srv/tasks/./bin/x"
        );
        assert_eq!(
            resolve_program(base, "scripts/x.sh".into()),
            "/srv/tasks/scripts/x.sh"
        );
        assert_eq!(resolve_program(base, "ffmpeg".into()), "ffmpeg");
        assert_eq!(resolve_program(base, "/usr/bin/env".into()), "/usr/bin/env");
    }
}
