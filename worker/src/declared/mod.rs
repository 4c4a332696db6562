//! Declared tasks: tasks written in a TOML file rather than in Rust, whose steps call an HTTP
//! endpoint or run a command (in any language), or wait. A replica runs them with
//! `warren worker --tasks FILE`, beside the tasks compiled into it, with everything a Rust task
//! has: checkpoints, retries held by the broker, dead letters, traces, metrics. A step may also
//! start child runs of other tasks and wait for them (`trigger`, `fan_out`).
//!
//! A declared task becomes an ordinary [`Task`] whose input is any JSON
//! ([`serde_json::Value`]), checked against the task's JSON Schema when it has one: the runtime
//! knows no difference. The file format, with a complete example, is in `docs/tasks.md`.
//!
//! A file is checked whole before anything runs: [`load`] and [`parse`] return every mistake of
//! the file at once, each at its line and column ([`Mistakes`]), so that `warren tasks validate`
//! and a replica refusing to start both say everything that is wrong.
//!
//! * `file`: the file read into tasks.
//! * `fields`: the values of the file, each with its place.
//! * `mistakes`: the mistakes, by line.
//! * `schema`: input schemas.
//! * `failure`: failure handlers.
//! * `children`: the steps that start child runs.

mod children;
mod failure;
mod fields;
mod file;
mod limits;
mod mistakes;
mod schedules;
mod schema;

pub use file::{DEFAULT_COMMAND_TIMEOUT, DEFAULT_HTTP_TIMEOUT};
pub use mistakes::{Mistake, Mistakes};

use file::Purpose;

use crate::task::{Registry, Task, TaskRunner};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The tasks of a valid task file.
pub struct DeclaredTasks {
    tasks: Vec<Task<Value>>,
}

impl std::fmt::Debug for DeclaredTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Why a task file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read the task file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file has mistakes.
    #[error(transparent)]
    Invalid(#[from] Mistakes),
}

/// Declared tasks that have the names of tasks already registered.
#[derive(Debug, thiserror::Error)]
#[error(
    "the task file declares task(s) this program already has built in: {}: rename them in the file",
    .0.join(", ")
)]
pub struct NameTaken(pub Vec<String>);

/// Reads the task file at `path`, for a program whose own tasks are `builtin` (a declared task
/// may not take one of their names).
pub fn load(path: &Path, builtin: &Registry) -> Result<DeclaredTasks, LoadError> {
    Ok(parse(&read(path)?, path, builtin)?)
}

/// Reads `source`, the text of the task file at `path` (which names it in mistakes, and which
/// relative paths in it are relative to).
pub fn parse(source: &str, path: &Path, builtin: &Registry) -> Result<DeclaredTasks, Mistakes> {
    parse_in(source, path, builtin, &|name| std::env::var_os(name))
}

/// As [`parse`], with the variables steps name (signing secrets) read from `environment`
/// rather than from this process's.
pub fn parse_in(
    source: &str,
    path: &Path,
    builtin: &Registry,
    environment: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<DeclaredTasks, Mistakes> {
    let taken: Vec<&str> = builtin.tasks().map(|task| task.id()).collect();
    file::read(source, path, &taken, Purpose::Run, environment).map(|tasks| DeclaredTasks { tasks })
}

/// Checks the task file at `path` for mistakes, as [`load`] would find them, but without
/// looking at this machine's environment (the replicas' signing secrets need not be here):
/// what `warren tasks validate` does. Returns how many tasks the file declares.
pub fn check(path: &Path, builtin: &Registry) -> Result<usize, LoadError> {
    let source = read(path)?;
    let taken: Vec<&str> = builtin.tasks().map(|task| task.id()).collect();
    Ok(file::read(&source, path, &taken, Purpose::Check, &|_| None)?.len())
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

impl DeclaredTasks {
    /// The tasks' names, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.tasks.iter().map(TaskRunner::id).collect()
    }

    /// How many tasks the file declares.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it declares none (never, for a valid file).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// `registry` with these tasks too. A declared task may not take the name of a task the
    /// registry has: one name, one queue, one meaning.
    pub fn register_into(self, registry: Registry) -> Result<Registry, NameTaken> {
        let taken: Vec<String> = self
            .tasks
            .iter()
            .filter(|task| registry.get(task.id()).is_some())
            .map(|task| task.id().to_owned())
            .collect();
        if !taken.is_empty() {
            return Err(NameTaken(taken));
        }
        Ok(self
            .tasks
            .into_iter()
            .fold(registry, |registry, task| registry.register(task)))
    }

    /// The tasks.
    pub fn into_tasks(self) -> Vec<Task<Value>> {
        self.tasks
    }
}

#[cfg(test)]
mod tests;
