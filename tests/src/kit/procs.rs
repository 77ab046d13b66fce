//! Looking at OS processes through `/proc`, for cleanup and for tests that prove cleanup.
//!
//! PostgreSQL's postmaster is not our child (pg_ctl daemonizes it) and its children may be
//! left as zombies nobody reaps, so "is it alive" must read the process state, not just check
//! that the pid exists.

use std::path::Path;

/// Pids whose parent is `pid` (read from `/proc/*/stat`).
///
/// Why: killing a postmaster with SIGKILL leaves its backends running for a while; a crash
/// test has to take them down too, and a cleanup test has to see that they are gone.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat_fields(*child).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// True while `pid` exists and is not a zombie (a zombie has exited and holds nothing).
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Live pids whose command line contains `needle`, e.g. a data directory path.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")) else {
                return false;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle)
        })
        .filter(|pid| is_alive(*pid))
        .collect()
}

/// `(state, ppid)` from `/proc/PID/stat`. The command name (field 2) may contain spaces and
/// parentheses, so parsing starts after the last `)`.
fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_own_child_and_its_death() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id();
        assert!(children_of(me).contains(&child.id()));
        assert!(is_alive(child.id()));
        child.kill().unwrap();
        // Not yet reaped: a zombie counts as dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_alive(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_alive(child.id()));
        child.wait().unwrap();
    }
}
