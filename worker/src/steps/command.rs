//! Command steps: a program run once per step execution, the step request as JSON on its
//! standard input, its standard output (JSON) the step's output. Documented in `docs/steps.md`
//! ("Command steps"), the contract for a program in any language:
//!
//! - exit 0 succeeds; the output is standard output read as JSON (nothing, or only white space,
//!   is the output `null`; anything else that is not JSON fails the step for good as
//!   `invalid_output`);
//! - the exit code `retry_exit_code` (75, `EX_TEMPFAIL`, unless configured) fails the step so
//!   that it is retried; any other exit code, or death by a signal, fails it for good;
//! - a failure's code and message are those of a JSON object `{"code", "message"}` on the last
//!   line of standard error, else `exit_N` and the last lines of standard error;
//! - each line of standard error, whatever the outcome, is a line of the run's log.
//!
//! What a program can never do to the worker: grow its memory (standard output past
//! `max_output_bytes` stops the program and fails the step as `output_too_large`; of standard
//! error only the last [`STDERR_TAIL`] bytes are kept), outlive its step (it leads a process
//! group of its own, killed whole when the call ends or is dropped by the step's timeout), read
//! the worker's secrets (its environment is exactly the configured `env`, plus `PATH` and `HOME`
//! unless `env` sets them), or leave files behind (it runs in a temporary directory of its own,
//! removed afterwards).

mod failure;
mod pipes;
mod process_group;

use super::{ExternalStep, StepConfigError, StepReply, StepRequest};
use crate::run_log::StepLog;
use crate::step::StepError;
use futures::future::BoxFuture;
use nix::errno::Errno;
use process_group::RunningGroup;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The exit code that asks for another attempt unless configured: `EX_TEMPFAIL` of sysexits.h.
pub const DEFAULT_RETRY_EXIT_CODE: i32 = 75;
/// How much standard output is kept unless configured.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How much of standard error is kept: its end, for the failure's message.
pub const STDERR_TAIL: usize = 64 * 1024;
/// `PATH` for the program when the worker has none and `env` names none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A command step as a task file declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStepConfig {
    /// The program: a name looked up in `PATH`, an absolute path, or a relative path (one with a
    /// `/`, such as `./extract.sh`), resolved against the step's base directory (for a task file,
    /// the file's directory).
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its whole environment (besides `PATH` and `HOME`): nothing of the worker's own leaks in.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The most standard output kept (default 1 MiB); more stops the program and fails the step.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// The exit code that means "try again" (default 75, `EX_TEMPFAIL`).
    #[serde(default)]
    pub retry_exit_code: Option<i32>,
}

impl CommandStepConfig {
    /// Whether the configuration can work (what `warren tasks validate` needs to know without
    /// running anything).
    pub fn check(&self) -> Result<(), StepConfigError> {
        let invalid = |why: String| Err(StepConfigError::Invalid(why));
        if self.program.trim().is_empty() {
            return invalid("a command step's `program` is empty".to_owned());
        }
        if self.program.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return invalid("a command step's program and arguments cannot contain NUL".to_owned());
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return invalid(format!(
                    "`env` of a command step: {name:?} cannot be an environment variable's name \
                     (empty, or containing `=` or NUL) or its value contains NUL"
                ));
            }
        }
        if self.max_output_bytes == Some(0) {
            return invalid("a command step's `max_output_bytes` must be at least 1".to_owned());
        }
        let retry_exit_code = self.retry_exit_code.unwrap_or(DEFAULT_RETRY_EXIT_CODE);
        if !(1..=255).contains(&retry_exit_code) {
            return invalid(format!(
                "a command step's `retry_exit_code` must be an exit code from 1 to 255, not {retry_exit_code}"
            ));
        }
        Ok(())
    }
}

/// A command step, ready to run.
pub struct CommandStep {
    spec: Arc<Spec>,
}

/// What each execution needs, shared with the executions in flight.
#[derive(Clone)]
struct Spec {
    /// As configured.
    configured: String,
    /// Resolved against the base directory.
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// The program's `PATH`: the one `env` names, else the worker's.
    path: OsString,
    max_output_bytes: usize,
    retry_exit_code: i32,
}

impl CommandStep {
    /// Checks the configuration. A relative program path resolves against the worker's
    /// current directory unless [`CommandStep::with_base_dir`] names another.
    pub fn new(config: CommandStepConfig) -> Result<Self, StepConfigError> {
        config.check()?;
        let max_output_bytes = config.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
        let retry_exit_code = config.retry_exit_code.unwrap_or(DEFAULT_RETRY_EXIT_CODE);
        let base = std::env::current_dir().unwrap_or_default();
        let path = match config.env.get("PATH") {
            Some(path) => path.into(),
            None => std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
        };
        Ok(CommandStep {
            spec: Arc::new(Spec {
                program: resolve(&config.program, &base),
                configured: config.program,
                args: config.args,
                env: config.env,
                path,
                max_output_bytes,
                retry_exit_code,
            }),
        })
    }

    /// Resolves a relative program path (one with a `/`) against `base` instead: a task file's
    /// steps name their scripts relative to the file.
    pub fn with_base_dir(self, base: impl AsRef<Path>) -> Self {
        let mut spec = Arc::unwrap_or_clone(self.spec);
        spec.program = resolve(&spec.configured, base.as_ref());
        CommandStep {
            spec: Arc::new(spec),
        }
    }

    /// The program that will run (its path once resolved).
    pub fn program(&self) -> &Path {
        &self.spec.program
    }
}

impl ExternalStep for CommandStep {
    fn call(
        &self,
        request: StepRequest,
        log: StepLog,
    ) -> BoxFuture<'static, Result<StepReply, StepError>> {
        let spec = Arc::clone(&self.spec);
        Box::pin(async move { spec.execute(&request, &log).await })
    }
}

/// `program` as the step will run it: a relative path (one with a `/`) joined to `base`; a bare
/// name is left for `PATH` to find.
fn resolve(program: &str, base: &Path) -> PathBuf {
    let path = Path::new(program);
    if program.contains('/') && path.is_relative() {
        base.join(path.strip_prefix(".").unwrap_or(path))
    } else {
        path.to_path_buf()
    }
}

impl Spec {
    /// Runs the program once for `request`, each line of its standard error to `log`.
    /// Dropping the future kills the program's whole process group and removes its working
    /// directory (see [`RunningGroup`]).
    async fn execute(&self, request: &StepRequest, log: &StepLog) -> Result<StepReply, StepError> {
        let body = serde_json::to_vec(request).map_err(|e| {
            StepError::fatal(
                "invalid_request",
                format!("the step request is not JSON: {e}"),
            )
        })?;
        let workdir = tempfile::Builder::new()
            .prefix("warren-step-")
            .tempdir()
            .map_err(|e| {
                StepError::retryable(
                    "workdir_unavailable",
                    format!("no temporary working directory for the program: {e}"),
                )
            })?;
        let program = self.locate()?;
        let child = self
            .command(&program, workdir.path())
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        let mut group = RunningGroup::new(child, workdir);
        let killer = group.killer();
        let (Some(mut stdin), Some(stdout), Some(stderr)) = (
            group.child.stdin.take(),
            group.child.stdout.take(),
            group.child.stderr.take(),
        ) else {
            return Err(StepError::retryable(
                "spawn_failed",
                "the program's standard streams could not be opened",
            ));
        };
        let feed = async move {
            // A program that does not read its input may exit before taking it all.
            match stdin.write_all(&body).await {
                Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e),
                _ => Ok(()),
            }
        };
        let exited = async {
            let status = group.child.wait().await;
            // Whatever the program left running goes with it (and lets its pipes close).
            killer.kill();
            status
        };
        let max_output_bytes = self.max_output_bytes;
        let read_stdout = async move {
            let read = pipes::read_all_within(stdout, max_output_bytes).await;
            if !matches!(read, Ok(Ok(_))) {
                // Nobody will read the rest: the program would block writing it.
                killer.kill();
            }
            read
        };
        let (fed, status, stdout, stderr) = tokio::join!(
            feed,
            exited,
            read_stdout,
            pipes::read_tail(stderr, STDERR_TAIL, |line| log.line(line)),
        );
        drop(group);
        let stdout = match stdout {
            Ok(Ok(stdout)) => stdout,
            Ok(Err(pipes::TooLarge)) => {
                return Err(StepError::fatal(
                    "output_too_large",
                    format!(
                        "the program wrote more than {max_output_bytes} bytes on standard output \
                         (max_output_bytes) and was stopped"
                    ),
                ));
            }
            Err(e) => {
                return Err(StepError::retryable(
                    "io_error",
                    format!("reading the program's standard output failed: {e}"),
                ));
            }
        };
        let status = status.map_err(|e| {
            StepError::retryable("io_error", format!("waiting for the program failed: {e}"))
        })?;
        if !status.success() {
            return Err(failure::step_error(status, &stderr, self.retry_exit_code));
        }
        fed.map_err(|e| {
            StepError::retryable(
                "io_error",
                format!("writing the step request to the program's standard input failed: {e}"),
            )
        })?;
        Ok(StepReply {
            output: output(&stdout)?,
            ..StepReply::default()
        })
    }

    /// The program's path: a bare name is looked up in the program's `PATH` here rather than by
    /// the spawn, because a spawn that must search a `PATH` other than the worker's falls back
    /// from `posix_spawn` to `fork` in the standard library, and forking the worker (its
    /// threads, its memory map) cost over a millisecond per step in the benchmark.
    fn locate(&self) -> Result<PathBuf, StepError> {
        if self.program.components().count() > 1 || self.program.is_absolute() {
            return Ok(self.program.clone());
        }
        std::env::split_paths(&self.path)
            // An empty entry means the current directory: the step's own, empty one.
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(&self.program))
            .find(|candidate| is_executable_file(candidate))
            .ok_or_else(|| {
                StepError::fatal(
                    "program_not_found",
                    format!(
                        "cannot run {}: no such program in PATH ({})",
                        self.program.display(),
                        self.path.to_string_lossy()
                    ),
                )
            })
    }

    /// The program, with nothing of the worker's environment but `PATH`, in `workdir`, as the
    /// leader of a process group of its own.
    fn command(&self, program: &Path, workdir: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .args(&self.args)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", workdir)
            .envs(&self.env)
            .current_dir(workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    /// The step failure for a program that could not be started: not there or not allowed is
    /// for good; the machine running short of processes or files is worth another attempt.
    fn spawn_error(&self, e: &std::io::Error) -> StepError {
        let program = self.program.display();
        match e.kind() {
            ErrorKind::NotFound => StepError::fatal(
                "program_not_found",
                format!(
                    "cannot run {program}: no such program (a bare name is looked up in PATH; \
                     a script's interpreter must exist too): {e}"
                ),
            ),
            ErrorKind::PermissionDenied => StepError::fatal(
                "permission_denied",
                format!("cannot run {program}: permission denied (is it executable?): {e}"),
            ),
            _ => match e.raw_os_error().map(Errno::from_raw) {
                Some(
                    Errno::EAGAIN | Errno::ENOMEM | Errno::EMFILE | Errno::ENFILE | Errno::ETXTBSY,
                ) => StepError::retryable("spawn_failed", format!("cannot run {program} now: {e}")),
                _ => StepError::fatal("spawn_failed", format!("cannot run {program}: {e}")),
            },
        }
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The step's output: standard output read as JSON, `null` when the program printed nothing.
fn output(stdout: &[u8]) -> Result<Value, StepError> {
    let text = stdout.trim_ascii();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(text).map_err(|e| {
        let start: String = String::from_utf8_lossy(text).chars().take(200).collect();
        StepError::fatal(
            "invalid_output",
            format!(
                "the program succeeded but its standard output is not JSON ({e}); it began with: {start:?}"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{ErrorClass, RunInfo};
    use serde_json::json;
    use std::time::Duration;

    fn request() -> StepRequest {
        StepRequest {
            run: RunInfo {
                id: uuid::Uuid::now_v7(),
                task: "media.track".into(),
                event: "media.track".into(),
                attempt: 1,
                message_id: "m-1".into(),
                tenant: None,
                scheduled_for: None,
            },
            step: "extract_audio".into(),
            input: json!({"url": "clip.mp4"}),
            outputs: BTreeMap::from([("probe".to_owned(), json!({"seconds": 3}))]),
        }
    }

    fn shell(script: &str) -> CommandStepConfig {
        CommandStepConfig {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
            max_output_bytes: None,
            retry_exit_code: None,
        }
    }

    async fn run(config: CommandStepConfig) -> Result<StepReply, StepError> {
        let step = CommandStep::new(config).unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            step.call(request(), StepLog::discard()),
        )
        .await
        .expect("the step ends by itself")
    }

    /// Whether `pid` is a live process (a zombie is not: it only waits to be reaped).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    async fn eventually_dead(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn read_pid(file: &Path) -> i32 {
        for _ in 0..250 {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the program never wrote {}", file.display());
    }

    #[tokio::test]
    async fn the_program_reads_the_request_on_stdin_and_its_stdout_is_the_output() {
        let request = request();
        let sent = serde_json::to_value(&request).unwrap();
        let reply = CommandStep::new(shell("cat"))
            .unwrap()
            .call(request, StepLog::discard())
            .await
            .unwrap();
        assert_eq!(reply.output, sent);
        assert_eq!(reply.output["outputs"]["probe"]["seconds"], 3);
    }

    #[tokio::test]
    async fn a_program_that_prints_nothing_succeeds_with_a_null_output() {
        let reply = run(shell("exit 0")).await.unwrap();
        assert_eq!(reply.output, Value::Null);
    }

    #[tokio::test]
    async fn stdout_that_is_not_json_fails_for_good_and_quotes_it() {
        let error = run(shell("echo '<html>oops'")).await.unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Fatal, "invalid_output")
        );
        assert!(error.message.contains("<html>oops"), "{}", error.message);
    }

    #[tokio::test]
    async fn exit_75_is_retryable_and_exit_3_fails_for_good_with_the_json_on_stderr() {
        let error = run(shell("echo busy >&2; exit 75")).await.unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Retryable, "exit_75")
        );
        assert!(error.message.ends_with("busy"), "{}", error.message);
        let error = run(shell(
            r#"echo '{"code":"bad_clip","message":"no video"}' >&2; exit 3"#,
        ))
        .await
        .unwrap_err();
        assert_eq!(error, StepError::fatal("bad_clip", "no video"));
    }

    #[tokio::test]
    async fn the_retry_exit_code_can_be_configured() {
        let mut config = shell("exit 9");
        config.retry_exit_code = Some(9);
        assert_eq!(run(config).await.unwrap_err().class, ErrorClass::Retryable);
    }

    #[tokio::test]
    async fn the_environment_is_the_configured_one_plus_path_and_home() {
        let mut config = shell(r#"printf '"%s"' "$(env | sort | tr '\n' ' ')""#);
        config.env = BTreeMap::from([("LANG".to_owned(), "C".to_owned())]);
        let output = run(config).await.unwrap().output;
        let names: Vec<&str> = output
            .as_str()
            .unwrap()
            .split_whitespace()
            .filter_map(|pair| pair.split('=').next())
            .collect();
        // sh itself adds PWD (and may add SHLVL or `_`); nothing else comes from the worker.
        let unexpected: Vec<&&str> = names
            .iter()
            .filter(|n| !["LANG", "PATH", "HOME", "PWD", "SHLVL", "_", "OLDPWD"].contains(n))
            .collect();
        assert!(
            unexpected.is_empty(),
            "leaked into the program: {unexpected:?} of {output}"
        );
        assert!(names.contains(&"LANG") && names.contains(&"PATH") && names.contains(&"HOME"));
    }

    #[tokio::test]
    async fn each_execution_runs_in_its_own_directory_removed_afterwards() {
        let script = r#"touch leftover; printf '["%s","%s"]' "$PWD" "$HOME""#;
        let first = run(shell(script)).await.unwrap().output;
        let second = run(shell(script)).await.unwrap().output;
        assert_ne!(first[0], second[0]);
        assert_eq!(first[0], first[1], "HOME is the working directory");
        for dir in [&first[0], &second[0]] {
            assert!(
                !Path::new(dir.as_str().unwrap()).exists(),
                "{dir} was left behind"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_program_fails_for_good_and_says_so() {
        let mut config = shell("");
        config.program = "warren-no-such-program".into();
        let error = run(config).await.unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Fatal, "program_not_found")
        );
        assert!(
            error.message.contains("warren-no-such-program"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn a_program_that_is_not_executable_fails_for_good_as_permission_denied() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("step.sh"), "#!/bin/sh\necho {}\n").unwrap();
        let mut config = shell("");
        config.program = "./step.sh".into();
        config.args.clear();
        let step = CommandStep::new(config).unwrap().with_base_dir(dir.path());
        assert_eq!(step.program(), dir.path().join("./step.sh"));
        let error = step.call(request(), StepLog::discard()).await.unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Fatal, "permission_denied")
        );
    }

    #[tokio::test]
    async fn a_relative_program_path_resolves_against_the_base_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("bin/step.sh");
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(&script, "#!/bin/sh\necho '{\"ran\": true}'\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = shell("");
        config.program = "bin/step.sh".into();
        config.args.clear();
        let step = CommandStep::new(config).unwrap().with_base_dir(dir.path());
        assert_eq!(
            step.call(request(), StepLog::discard())
                .await
                .unwrap()
                .output,
            json!({"ran": true})
        );
    }

    #[tokio::test]
    async fn a_bare_name_is_looked_up_in_the_path_the_step_configures() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("warren-test-tool");
        std::fs::write(&tool, "#!/bin/sh\necho '\"mine\"'\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = shell("");
        config.program = "warren-test-tool".into();
        config.args.clear();
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        config.env = BTreeMap::from([("PATH".to_owned(), path)]);
        assert_eq!(run(config).await.unwrap().output, json!("mine"));
    }

    #[tokio::test]
    async fn a_program_writing_without_end_is_stopped_at_the_output_limit() {
        let mut config = shell("yes");
        config.max_output_bytes = Some(1024 * 1024);
        let error = run(config).await.unwrap_err();
        assert_eq!(
            (error.class, error.code.as_str()),
            (ErrorClass::Fatal, "output_too_large")
        );
        assert!(error.message.contains("1048576 bytes"), "{}", error.message);
    }

    #[tokio::test]
    async fn what_a_program_leaves_running_is_killed_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut config = shell(r#"sleep 300 & echo $! > "$PID_FILE"; echo '{}'"#);
        config.env = BTreeMap::from([("PID_FILE".to_owned(), pid_file.display().to_string())]);
        // The grandchild keeps stdout open: without the group kill this would wait 300 s.
        assert_eq!(run(config).await.unwrap().output, json!({}));
        let grandchild = read_pid(&pid_file).await;
        assert!(
            eventually_dead(grandchild).await,
            "sleep {grandchild} outlived its step"
        );
    }

    #[tokio::test]
    async fn dropping_the_call_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let mut config = shell(
            r#"sleep 300 & echo "$$ $!" > "$PID_FILE.tmp"; mv "$PID_FILE.tmp" "$PID_FILE"; wait"#,
        );
        config.env = BTreeMap::from([("PID_FILE".to_owned(), pid_file.display().to_string())]);
        let step = CommandStep::new(config).unwrap();
        let call = step.call(request(), StepLog::discard());
        let pids = tokio::select! {
            _ = call => panic!("the program ended by itself"),
            pids = async {
                for _ in 0..250 {
                    if let Ok(text) = std::fs::read_to_string(&pid_file) {
                        return text;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("the program never wrote its pids");
            } => pids,
        };
        // `call` is dropped here, as a step timeout drops it.
        for pid in pids.split_whitespace() {
            let pid: i32 = pid.parse().unwrap();
            assert!(
                eventually_dead(pid).await,
                "process {pid} outlived the dropped call"
            );
        }
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let mut config = shell("");
        config.program = " ".into();
        assert!(CommandStep::new(config).is_err());
        let mut config = shell("");
        config.retry_exit_code = Some(0);
        assert!(CommandStep::new(config).is_err());
        let mut config = shell("");
        config.env.insert("A=B".into(), "x".into());
        assert!(CommandStep::new(config).is_err());
        let mut config = shell("");
        config.max_output_bytes = Some(0);
        assert!(config.check().is_err());
        assert!(CommandStep::new(config).is_err());
        assert!(shell("true").check().is_ok());
    }
}
