//! Keeping the report token away from the game, which runs as the supervisor's user and can
//! read the supervisor's `/proc/<pid>/environ`, `cmdline` and (when dumpable) `mem`.
//!
//! Removing a variable with [`std::env::remove_var`] only takes it out of libc's `environ`
//! array: `/proc/<pid>/environ` and `cmdline` are read from the process's original argument
//! and environment blocks, which still hold it. So, before anything is spawned, the
//! supervisor marks itself not dumpable ([`set_not_dumpable`]), takes the token out of its
//! environment ([`take_env_token`]) and overwrites every copy of it in those two blocks
//! ([`scrub_process_blocks`]). The recommended way to pass the token is a file
//! (`--report-token-file`), which never reaches either block.

use std::io;

/// Marks the process not dumpable (`PR_SET_DUMPABLE` 0): a process of the same user without
/// `CAP_SYS_PTRACE` (the game) can no longer open its `/proc/<pid>/environ`, `mem` or
/// attach to it. Children are unaffected: `execve` resets the flag.
pub fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes `name` out of the process environment and returns its value (`None` when unset or
/// empty). Call it while the process has one thread, before spawning anything.
pub fn take_env_token(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    std::env::remove_var(name);
    value.filter(|v| !v.is_empty())
}

/// Overwrites, in the process's original argument block, every occurrence of `secret`, and
/// in its original environment block, the values of every `NAME=` entry, with `*`: what
/// `/proc/<pid>/cmdline` and `/proc/<pid>/environ` show. Call it after the arguments were
/// parsed and `name` removed from the environment (libc then no longer points at the
/// entry), while the process has one thread. Returns how many bytes were overwritten.
pub fn scrub_process_blocks(name: &str, secret: Option<&str>) -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let blocks = proc_blocks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/self/stat has no argument and environment block addresses",
        )
    })?;
    let mut scrubbed = 0;
    let [(arg_start, arg_end), (env_start, env_end)] = blocks;
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        if arg_start != 0 && arg_end > arg_start {
            // SAFETY: the kernel reports [arg_start, arg_end) as this process's argument
            // block: mapped, writable (the initial stack) and not borrowed by Rust code
            // (std copies arguments out when asked for them).
            let block = unsafe {
                std::slice::from_raw_parts_mut(arg_start as *mut u8, arg_end - arg_start)
            };
            scrubbed += mask_occurrences(block, secret.as_bytes());
        }
    }
    if env_start != 0 && env_end > env_start {
        // SAFETY: as above, for the environment block; the entries changed are no longer in
        // libc's `environ` (the caller removed the variable), so nothing reads them.
        let block =
            unsafe { std::slice::from_raw_parts_mut(env_start as *mut u8, env_end - env_start) };
        scrubbed += mask_entries(block, name.as_bytes());
    }
    Ok(scrubbed)
}

/// `[(arg_start, arg_end), (env_start, env_end)]` from the text of `/proc/<pid>/stat`
/// (fields 48 to 51, since Linux 3.5).
fn proc_blocks(stat: &str) -> Option<[(usize, usize); 2]> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([(field(48)?, field(49)?), (field(50)?, field(51)?)])
}

/// Replaces every occurrence of `needle` in `block` with `*`s; returns the bytes changed.
fn mask_occurrences(block: &mut [u8], needle: &[u8]) -> usize {
    let mut changed = 0;
    let mut i = 0;
    while needle.len() <= block.len() && i + needle.len() <= block.len() {
        if &block[i..i + needle.len()] == needle {
            block[i..i + needle.len()].fill(b'*');
            changed += needle.len();
            i += needle.len();
        } else {
            i += 1;
        }
    }
    changed
}

/// Replaces the value of every NUL-separated `name=value` entry of `block` with `*`s.
fn mask_entries(block: &mut [u8], name: &[u8]) -> usize {
    let mut changed = 0;
    for entry in block.split_mut(|b| *b == 0) {
        if entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=' {
            let value = &mut entry[name.len() + 1..];
            value.fill(b'*');
            changed += value.len();
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let mut stat = String::from("42 (a) b (c)) S");
        for n in 4..=52 {
            stat.push_str(&format!(" {n}"));
        }
        assert_eq!(proc_blocks(&stat), Some([(48, 49), (50, 51)]));
        assert_eq!(proc_blocks("42 (x) S 1 2"), None);
    }

    #[test]
    fn masks_values_and_occurrences() {
        let mut env = b"A=1\0TOKEN=abc\0TOKENX=keep\0TOKEN=\0".to_vec();
        assert_eq!(mask_entries(&mut env, b"TOKEN"), 3);
        assert_eq!(env, b"A=1\0TOKEN=***\0TOKENX=keep\0TOKEN=\0");
        let mut args = b"x\0--report-token=abc\0abc\0ab\0".to_vec();
        assert_eq!(mask_occurrences(&mut args, b"abc"), 6);
        assert_eq!(args, b"x\0--report-token=***\0***\0ab\0");
    }
}
