//! The process group of one command execution, and the guarantee that it dies with the call.
//!
//! The program runs as the leader of a process group of its own, so that everything it starts
//! (a shell's children, ffmpeg's helpers) can be stopped together. The group is killed when the
//! call's future is dropped (the step timed out, the worker stopped waiting) and also when the
//! program itself exits: a grandchild it left behind would otherwise outlive the step, hold its
//! pipes open and write into a working directory that is about to be removed.

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

/// A running program and its process group: dropping it kills the whole group.
///
/// Fields drop in order after [`Drop::drop`]: the group is killed first, then the child is
/// handed to tokio's reaper (`kill_on_drop`), then the working directory is removed, when
/// nothing can write into it any more.
pub(super) struct RunningGroup {
    pub(super) child: Child,
    pgid: Option<Pid>,
    _workdir: tempfile::TempDir,
}

impl RunningGroup {
    /// Takes charge of `child`, spawned with `process_group(0)` (so its pid names its group),
    /// and of the working directory it runs in.
    pub(super) fn new(child: Child, workdir: tempfile::TempDir) -> Self {
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        RunningGroup {
            child,
            pgid,
            _workdir: workdir,
        }
    }

    /// A handle that kills the group, usable while `child` is borrowed.
    pub(super) fn killer(&self) -> GroupKiller {
        GroupKiller(self.pgid)
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        self.killer().kill();
    }
}

/// Kills a process group with SIGKILL.
#[derive(Clone, Copy)]
pub(super) struct GroupKiller(Option<Pid>);

impl GroupKiller {
    /// Sends SIGKILL to every process of the group. Called right after the leader is reaped
    /// too: the group's id cannot name another group while any member lives, and a pid is not
    /// handed out again within the microseconds between the reaping and this call.
    pub(super) fn kill(self) {
        let Some(pgid) = self.0 else { return };
        match killpg(pgid, Signal::SIGKILL) {
            // ESRCH: nobody left in the group, the usual case once the program has exited.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = pgid.as_raw(), error = %e, "could not kill a command step's process group")
            }
        }
    }
}
