//! Processes: the game in its own process group, signals to that group, and the reaper that
//! collects every child that exits, the orphans a PID 1 (or child subreaper) inherits
//! included, while handing the game's (and probes') statuses to whoever waits for them.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

impl ChildExit {
    /// The code to exit with: the code, or 128 + the signal number as shells report it.
    pub fn exit_code(self) -> i32 {
        match self {
            ChildExit::Code(c) => c,
            ChildExit::Signal(s) => 128 + s,
        }
    }

    /// The signal that killed the process, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            ChildExit::Code(_) => None,
            ChildExit::Signal(s) => Some(s),
        }
    }
}

/// Reaps every exited child of this process with `waitpid(-1)`. Processes started through
/// [`Reaper::spawn`] have their status delivered; all others (orphans re-parented to us) are
/// just collected so they do not stay zombies.
///
/// Spawning and reaping take the same lock, so a process cannot be reaped between its fork
/// and the registration of its waiter.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ChildExit>>>,
    orphans: AtomicU64,
}

/// What one [`Reaper::reap`] pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Processes collected in this pass.
    pub count: usize,
    /// This process has no children left at all.
    pub no_children: bool,
}

impl Reaper {
    /// Starts `cmd` and returns its pid and a receiver of its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(i32, oneshot::Receiver<ChildExit>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping a std Child neither waits for nor kills it: the reaper collects it.
        drop(child);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Collects every child that has exited, without blocking.
    pub fn reap(&self) -> Reaped {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reaped = Reaped::default();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with a valid pointer to a c_int; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == 0 {
                break;
            }
            if pid < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => reaped.no_children = true,
                    _ => {}
                }
                break;
            }
            let exit = if libc::WIFEXITED(status) {
                ChildExit::Code(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                ChildExit::Signal(libc::WTERMSIG(status))
            } else {
                continue;
            };
            reaped.count += 1;
            match waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    self.orphans.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        reaped
    }

    /// Number of processes reaped that nobody waited for (re-parented orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans.load(Ordering::Relaxed)
    }
}

/// Makes the command start in a new process group of its own (pgid = its pid), and, when
/// stdin is a terminal, the terminal's foreground group, so an interactive game can read its
/// console without being stopped by SIGTTIN.
pub fn own_process_group(cmd: &mut Command) {
    // SAFETY: isatty only inspects a file descriptor.
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (setpgid, signal, tcsetpgrp, getpid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if tty {
                // tcsetpgrp from a background group raises SIGTTOU: ignore it meanwhile.
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}

/// Sends `signal` to every process of the process group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal process group {pgid}"),
        ));
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// When this process is not PID 1, marks it a child subreaper, so orphaned descendants are
/// re-parented to it (as they are to PID 1 in a container) and it reaps them. Returns whether
/// it is PID 1 or a subreaper.
pub fn become_subreaper() -> bool {
    // SAFETY: getpid and prctl(PR_SET_CHILD_SUBREAPER) have no memory-safety preconditions.
    unsafe {
        if libc::getpid() == 1 {
            return true;
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) == 0
    }
}

/// Name of a signal number, for messages.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(ChildExit::Code(3).exit_code(), 3);
        assert_eq!(ChildExit::Signal(libc::SIGKILL).exit_code(), 137);
        assert_eq!(ChildExit::Signal(libc::SIGTERM).signal(), Some(15));
        assert_eq!(ChildExit::Code(0).signal(), None);
    }

    #[test]
    fn refuses_to_signal_group_zero_or_one() {
        assert!(signal_group(0, 0).is_err());
        assert!(signal_group(1, 0).is_err());
    }
}
