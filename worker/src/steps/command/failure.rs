//! What a program's failure becomes: the exit code decides whether the step is retried, and the
//! program's own words on standard error say what went wrong.

use crate::step::StepError;
use serde::Deserialize;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How many of standard error's last lines a failure quotes when the program wrote no JSON.
const QUOTED_LINES: usize = 10;
/// The most characters a failure quotes from standard error.
const QUOTED_CHARS: usize = 2000;

/// The error a program may write as the last line of its standard error.
#[derive(Deserialize)]
struct ReportedError {
    code: Option<String>,
    message: Option<String>,
}

/// The step failure for a program that ended with `status` (not success) having written
/// `stderr` (its tail); `retry_exit_code` is the exit code that asks for another attempt.
pub(super) fn step_error(status: ExitStatus, stderr: &[u8], retry_exit_code: i32) -> StepError {
    let text = String::from_utf8_lossy(stderr);
    let reported =
        last_line(&text).and_then(|line| serde_json::from_str::<ReportedError>(line).ok());
    let (exit, default_code) = match (status.code(), status.signal()) {
        (Some(code), _) => (format!("exited with status {code}"), format!("exit_{code}")),
        (None, Some(signal)) => (
            format!("was killed by signal {}", signal_name(signal)),
            "killed_by_signal".to_owned(),
        ),
        (None, None) => ("ended abnormally".to_owned(), "abnormal_exit".to_owned()),
    };
    let (code, message) = match reported {
        Some(ReportedError { code, message }) => (
            code.filter(|c| !c.is_empty()).unwrap_or(default_code),
            message.unwrap_or_else(|| format!("the program {exit}")),
        ),
        None => (default_code, describe(&exit, &text)),
    };
    if status.code() == Some(retry_exit_code) {
        StepError::retryable(code, message)
    } else {
        StepError::fatal(code, message)
    }
}

/// The last line of `text` with anything on it.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|line| !line.is_empty())
}

/// "the program exited with status 3: <its last lines of standard error>".
fn describe(exit: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("the program {exit} and wrote nothing on standard error");
    }
    let quoted = lines[lines.len().saturating_sub(QUOTED_LINES)..].join("\n");
    let skip = quoted.chars().count().saturating_sub(QUOTED_CHARS);
    let quoted: String = quoted.chars().skip(skip).collect();
    format!("the program {exit}; standard error ended with:\n{quoted}")
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| signal.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::ErrorClass;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn a_json_object_on_the_last_line_of_stderr_gives_the_code_and_message() {
        let stderr = b"working...\n{\"code\":\"bad_clip\",\"message\":\"no video stream\"}\n";
        let error = step_error(exited(3), stderr, 75);
        assert_eq!(error.class, ErrorClass::Fatal);
        assert_eq!(error.code, "bad_clip");
        assert_eq!(error.message, "no video stream");
    }

    #[test]
    fn without_json_the_message_quotes_the_last_lines_of_stderr() {
        let stderr: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let error = step_error(exited(2), stderr.as_bytes(), 75);
        assert_eq!(error.code, "exit_2");
        assert!(
            error.message.contains("exited with status 2"),
            "{}",
            error.message
        );
        assert!(error.message.ends_with("line 21\nline 22\nline 23\nline 24\nline 25\nline 26\nline 27\nline 28\nline 29\nline 30"), "{}", error.message);
        assert!(!error.message.contains("line 20\n"), "{}", error.message);
    }

    #[test]
    fn the_retry_exit_code_is_retryable_and_any_other_is_not() {
        assert_eq!(step_error(exited(75), b"", 75).class, ErrorClass::Retryable);
        assert_eq!(step_error(exited(1), b"", 75).class, ErrorClass::Fatal);
        assert_eq!(step_error(exited(75), b"", 99).class, ErrorClass::Fatal);
    }

    #[test]
    fn a_program_killed_by_a_signal_fails_for_good_and_says_which() {
        let error = step_error(ExitStatus::from_raw(11), b"", 75);
        assert_eq!(error.class, ErrorClass::Fatal);
        assert_eq!(error.code, "killed_by_signal");
        assert!(error.message.contains("SIGSEGV"), "{}", error.message);
    }

    #[test]
    fn silence_on_stderr_is_said_plainly() {
        let error = step_error(exited(4), b"", 75);
        assert_eq!(
            error.message,
            "the program exited with status 4 and wrote nothing on standard error"
        );
    }
}
