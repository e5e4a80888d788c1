//! Running shell commands: the archive and restore commands
//! (`wal_archive_command`, `wal_restore_command`).
//!
//! A command is a capability of the environment like the disk: production
//! runs it through `sh -c` ([`ShellCommands`]), and the simulator supplies
//! its own implementation that "archives" into a simulated store and can
//! fail, hang or half-write. The caller applies its own timeout (through
//! tokio's timer, which the simulator controls); dropping the future of a
//! running command kills it.

use std::io;

use async_trait::async_trait;

/// What a finished command reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` if a signal ended it.
    pub status: Option<i32>,
    /// What it wrote to stderr (for the log).
    pub stderr: String,
}

impl CommandOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs commands.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Runs `command` (a shell command line, already substituted) to its end.
    async fn run(&self, command: &str) -> io::Result<CommandOutput>;
}

/// An environment that runs no commands: every attempt fails with an error
/// that says so.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCommands;

#[async_trait]
impl CommandRunner for NoCommands {
    async fn run(&self, command: &str) -> io::Result<CommandOutput> {
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("this environment runs no commands: {command}")))
    }
}

/// Substitutes `%f` (a full path), `%n` (a file name) and `%%` (a literal
/// `%`) in an archive or restore command, as SPEC.md defines them. Any other
/// `%` sequence is left as it is.
pub fn substitute(template: &str, path: &str, name: &str) -> String {
    let mut out = String::with_capacity(template.len() + path.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('f') => out.push_str(path),
            Some('n') => out.push_str(name),
            Some('%') => out.push('%'),
            _ => {
                out.push('%');
                continue;
            }
        }
        chars.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_page() {
        let cmd = "aws s3 cp %f s3://bucket/wal/%n --note 100%% --keep %x%";
        assert_eq!(
            substitute(cmd, "/wal/000000010000000000000042", "000000010000000000000042"),
            "aws s3 cp /wal/000000010000000000000042 s3://bucket/wal/000000010000000000000042 --note 100% --keep %x%"
        );
        assert_eq!(substitute("%%f %%n", "P", "N"), "%f %n", "an escaped percent is not a placeholder");
    }
}
