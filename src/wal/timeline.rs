//! Timelines and their history files.
//!
//! A point-in-time recovery ends the log it replayed at its stop point and
//! continues on a new timeline, so that the WAL it writes never reuses a
//! name the old timeline archived. Timeline `N`'s history file,
//! `0000000N.history`, lists every switch that led to it, oldest first, one
//! per line, as PostgreSQL writes them: the parent timeline, the LSN where
//! the child branched off (the first byte the child wrote itself), and a
//! reason, separated by tabs:
//!
//! ```text
//! 1<TAB>0/3A2B1C8<TAB>before 2026-01-15T14:30:00Z
//! ```
//!
//! A timeline's records are valid below its switch point; from there on its
//! child's are. The segment holding a switch point is read under the
//! child's name: the child's copy holds the parent's records before the
//! switch, then its own.

use std::fmt;
use std::io;
use std::path::Path;

use super::lsn::Lsn;
use crate::env::Fs;

/// One switch: the parent timeline, and where its child branched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that was left.
    pub parent: u32,
    /// The first LSN the child wrote: the parent's records below it are
    /// the child's history.
    pub switch_lsn: Lsn,
    /// Why (the recovery target), for people.
    pub reason: String,
}

/// The name of timeline `timeline`'s history file.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// Parses a history file name into its timeline.
pub fn parse_history_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// A timeline's history: the switches that led to it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The switches, oldest first.
    pub switches: Vec<TimelineSwitch>,
}

/// Why a history file does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.detail)
    }
}

impl TimelineHistory {
    /// Parses a history file's text. Blank lines and `#` comments are
    /// skipped; parents must increase and switch points must not decrease.
    pub fn parse(text: &str) -> Result<Self, HistoryError> {
        let mut switches: Vec<TimelineSwitch> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fail = |detail: String| HistoryError { line: line_no, detail };
            let mut fields = trimmed.splitn(3, ['\t', ' ']);
            let parent = fields.next().unwrap_or_default();
            let parent: u32 = parent.parse().map_err(|_| fail(format!("`{parent}` is not a timeline number")))?;
            let lsn = fields.next().ok_or_else(|| fail("no switch LSN".into()))?.trim();
            let switch_lsn: Lsn = lsn.parse().map_err(|_| fail(format!("`{lsn}` is not an LSN (X/Y)")))?;
            let reason = fields.next().unwrap_or("").trim().to_string();
            if let Some(last) = switches.last() {
                if parent <= last.parent || switch_lsn < last.switch_lsn {
                    return Err(fail(format!(
                        "timeline {parent} at {switch_lsn} does not follow timeline {} at {}",
                        last.parent, last.switch_lsn
                    )));
                }
            }
            if parent == 0 {
                return Err(fail("timeline 0 does not exist".into()));
            }
            switches.push(TimelineSwitch { parent, switch_lsn, reason });
        }
        Ok(Self { switches })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.switches.iter().map(|s| format!("{}\t{}\t{}\n", s.parent, s.switch_lsn, s.reason)).collect()
    }

    /// This history with one more switch: `parent` left at `switch_lsn`.
    pub fn child(&self, parent: u32, switch_lsn: Lsn, reason: impl Into<String>) -> Self {
        let mut switches = self.switches.clone();
        switches.push(TimelineSwitch { parent, switch_lsn, reason: reason.into() });
        Self { switches }
    }

    /// Where timeline `timeline` branched off into its successor in this
    /// history, if it is an ancestor here.
    pub fn switch_of(&self, timeline: u32) -> Option<Lsn> {
        self.switches.iter().find(|s| s.parent == timeline).map(|s| s.switch_lsn)
    }
}

/// Reads timeline `timeline`'s history file from `dir`: `None` if there is
/// none. An unreadable or malformed one is an error naming the file.
pub fn read_history(fs: &dyn Fs, dir: &Path, timeline: u32) -> Result<Option<TimelineHistory>, String> {
    let path = dir.join(history_file_name(timeline));
    let file = match fs.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let len = file.len().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let history = TimelineHistory::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(last) = history.switches.last().filter(|last| last.parent >= timeline) {
        return Err(format!(
            "{}: its last switch leaves timeline {}, which is not older than timeline {timeline}",
            path.display(),
            last.parent
        ));
    }
    Ok(Some(history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(history_file_name(2), "00000002.history");
        assert_eq!(history_file_name(0x1A), "0000001A.history");
        assert_eq!(parse_history_file_name("0000001A.history"), Some(0x1A));
        assert_eq!(parse_history_file_name("0000001a.history"), None);
        assert_eq!(parse_history_file_name("000000010000000000000001"), None);
    }

    #[test]
    fn history_round_trips_in_postgres_format() {
        let history = TimelineHistory::default().child(1, Lsn(0x3A2_B1C8), "before 2026-01-15T14:30:00Z").child(
            2,
            Lsn(0x1_0000_0000),
            "latest",
        );
        let text = history.render();
        assert_eq!(text, "1\t0/3A2B1C8\tbefore 2026-01-15T14:30:00Z\n2\t1/0\tlatest\n");
        assert_eq!(TimelineHistory::parse(&text).unwrap(), history);
        assert_eq!(history.switch_of(2), Some(Lsn(0x1_0000_0000)));
        assert_eq!(history.switch_of(3), None);
    }

    #[test]
    fn bad_histories_name_the_line() {
        let error = TimelineHistory::parse("1\t0/10\tx\n1\t0/20\ty\n").unwrap_err();
        assert_eq!(error.line, 2);
        let error = TimelineHistory::parse("# comment\n\nx\t0/10\n").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(TimelineHistory::parse("1\tnope\n").unwrap_err().detail.contains("not an LSN"));
    }
}
