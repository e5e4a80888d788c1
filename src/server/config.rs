//! The server's configuration: embedded defaults, a TOML file, `THUNDERDB_*`
//! environment variables and command-line flags, in rising precedence.
//!
//! Every source is checked on its own before they are merged, so an error
//! names where the bad setting came from: the file (with its line), the
//! environment variable, or the flag. An unknown key is an error, never
//! ignored: a typo in a backup setting must not silently fall back to a
//! default.
//!
//! Sizes accept `B`, `KB`, `MB`, `GB`, `TB` (powers of 1024, any case, spaces
//! allowed) or a plain integer of bytes. Durations accept `ms`, `s`, `m`, `h`
//! and `d` (e.g. `"30s"`, `"7d"`, `"1h 30m"`).
//!
//! Environment variables are `THUNDERDB_` and the key in capitals, without
//! its section: `THUNDERDB_PG_PORT=5433`, `THUNDERDB_MAX_WAL_SIZE=1GB`,
//! `THUNDERDB_ADMIN_TOKEN=…`. An unknown `THUNDERDB_*` variable is an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The configuration every default comes from (SPEC.md), as a config file
/// would write it.
pub const DEFAULTS: &str = r#"
listen_addr = "127.0.0.1"
pg_port     = 5432
http_port   = 8088
max_connections = 100
data_dir    = "./thunderdb-data/data"
wal_dir     = "./thunderdb-data/wal"

[storage]
buffer_pool_size      = "128MB"
checkpoint_interval   = "30s"
max_wal_size          = "512MB"
wal_segment_size      = "16MB"
wal_compression       = "zstd"
wal_archive_enabled   = false
wal_archive_dir       = ""
wal_archive_command   = ""
wal_restore_command   = ""
wal_archive_retention = "7d"
wal_archive_timeout   = "5m"
lock_timeout          = "10s"

[security]
superuser_password = ""
admin_token        = ""

[cluster]
node_id   = 1
raft_addr = ""
peers     = []
standby   = false
raft_log_compact_entries = 4096
"#;

/// A size in bytes, written with a unit or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address both listeners bind.
    pub listen_addr: String,
    /// The PostgreSQL wire protocol port.
    pub pg_port: u16,
    /// The admin HTTP port.
    pub http_port: u16,
    /// How many SQL sessions may be open at once; past it a new client is
    /// refused with SQLSTATE 53300.
    pub max_connections: u32,
    /// Where the data file and control file live.
    pub data_dir: PathBuf,
    /// Where the WAL segments live.
    pub wal_dir: PathBuf,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[security]`.
    pub security: SecurityConfig,
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// The effective settings as a config file, secrets redacted: what a
    /// backup stores as `thunderdb.toml`.
    #[serde(skip)]
    pub effective_toml: String,
}

/// The `[storage]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The buffer pool's size.
    pub buffer_pool_size: ByteSize,
    /// Time between checkpoints.
    pub checkpoint_interval: HumanDuration,
    /// WAL since the last checkpoint that forces one.
    pub max_wal_size: ByteSize,
    /// One WAL segment file: a power of two, 1 MB to 1 GB.
    pub wal_segment_size: ByteSize,
    /// How full-page images are stored in the WAL: `"zstd"` or `"off"`.
    pub wal_compression: crate::wal::WalCompression,
    /// Whether completed segments are archived.
    pub wal_archive_enabled: bool,
    /// Where archived segments go (empty: not set).
    pub wal_archive_dir: String,
    /// A command that archives one segment (`%f` path, `%n` name).
    pub wal_archive_command: String,
    /// A command that fetches one segment for recovery.
    pub wal_restore_command: String,
    /// How long archived segments are kept.
    pub wal_archive_retention: HumanDuration,
    /// An archive command running longer than this is killed and retried.
    pub wal_archive_timeout: HumanDuration,
    /// How long a transaction waits for a lock before it is rolled back.
    pub lock_timeout: HumanDuration,
}

impl StorageConfig {
    /// Where WAL archiving goes: `None` when it is off. Exactly one of
    /// `wal_archive_dir` and `wal_archive_command` must be set when it is on.
    pub fn archive_mode(&self) -> Result<Option<crate::archive::ArchiveMode>, String> {
        use crate::archive::ArchiveMode;
        let (dir, command) = (self.wal_archive_dir.trim(), self.wal_archive_command.trim());
        match (self.wal_archive_enabled, dir.is_empty(), command.is_empty()) {
            (false, _, _) => Ok(None),
            (true, true, true) => Err("`storage.wal_archive_enabled` is true, but neither \
                 `storage.wal_archive_dir` nor `storage.wal_archive_command` is set: say where segments go"
                .into()),
            (true, false, false) => Err("`storage.wal_archive_dir` and `storage.wal_archive_command` are both set: \
                 archiving uses one or the other; remove one"
                .into()),
            (true, false, true) => Ok(Some(ArchiveMode::Dir(PathBuf::from(dir)))),
            (true, true, false) => Ok(Some(ArchiveMode::Command(command.to_string()))),
        }
    }
}

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id in its group.
    pub node_id: u64,
    /// Where it listens for its Raft peers.
    pub raft_addr: String,
    /// Every voter, itself included (`"ID@HOST:PORT"`).
    pub peers: Vec<String>,
    /// Follow the WAL archive (`wal_archive_dir` or `wal_restore_command`)
    /// as a standby, until promoted.
    pub standby: bool,
    /// The node compacts its Raft log once this many entries it may drop
    /// have gathered.
    pub raft_log_compact_entries: u64,
}

/// The `[security]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The password clients must give (empty: trust loopback).
    pub superuser_password: String,
    /// The bearer token the admin API requires (empty: none).
    pub admin_token: String,
}

/// A setting that could not be used, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// The file, environment variable or flag.
    pub source_name: String,
    /// What was wrong, naming the key.
    pub message: String,
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => parse_size(&text).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses `"512MB"`, `"16 mb"`, `"1GB"`, `"4096"`, `"4096B"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let bad = || format!("invalid size {text:?}: expected a whole number with B, KB, MB, GB or TB (e.g. \"512MB\")");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "KB" => 10,
        "MB" => 20,
        "GB" => 30,
        "TB" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses `"30s"`, `"500ms"`, `"7d"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e}; expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\"")
    })
}

/// Where a layer of settings came from.
#[derive(Debug, Clone)]
enum Source {
    Defaults,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Defaults => f.write_str("built-in defaults"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(name) => write!(f, "command-line flag --{name}"),
        }
    }
}

/// Builds the configuration from the defaults, then `file`'s contents (its
/// path and text), then `env` (`THUNDERDB_*` pairs), then `flags` (key and
/// value, e.g. from `--pg-port`).
pub fn load(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
    flags: &[(&str, String)],
) -> Result<Config, ConfigError> {
    let defaults: toml::Table = toml::from_str(DEFAULTS).expect("the defaults parse");
    let mut layers: Vec<(Source, toml::Table)> = Vec::new();
    if let Some((path, text)) = file {
        let source = Source::File(path.to_path_buf());
        let table: toml::Table = toml::from_str(text).map_err(|e| error(&source, e.to_string()))?;
        layers.push((source, table));
    }
    for (name, value) in env.iter().filter(|(name, _)| name.starts_with("THUNDERDB_")) {
        let source = Source::Env(name.clone());
        let key = name["THUNDERDB_".len()..].to_ascii_lowercase();
        layers.push((source.clone(), single(&defaults, &key, value).map_err(|m| error(&source, m))?));
    }
    for (key, value) in flags {
        let source = Source::Flag(key.replace('_', "-"));
        layers.push((source.clone(), single(&defaults, key, value).map_err(|m| error(&source, m))?));
    }
    let mut merged = defaults.clone();
    for (source, layer) in &layers {
        check_keys(&defaults, layer, "").map_err(|m| error(source, m))?;
        // Each setting alone over the defaults must make a valid config, so
        // a bad value is reported against its own source and key.
        for (path, leaf) in leaves(layer, "") {
            let mut alone = defaults.clone();
            overlay(&mut alone, &leaf);
            validate(alone).map_err(|m| {
                let m = if m.contains(&format!("`{path}`")) { m } else { format!("`{path}`: {m}") };
                error(source, m)
            })?;
        }
        overlay(&mut merged, layer);
    }
    let mut config = validate(merged.clone()).map_err(|m| error(&Source::Defaults, m))?;
    // Settings that only make sense together are checked once merged.
    if let Err(message) = config.storage.archive_mode() {
        let keys = ["wal_archive_enabled", "wal_archive_dir", "wal_archive_command"];
        let sets_one = |layer: &toml::Table| {
            layer
                .get("storage")
                .and_then(toml::Value::as_table)
                .is_some_and(|s| keys.iter().any(|k| s.contains_key(*k)))
        };
        let sources: Vec<String> =
            layers.iter().filter(|(_, layer)| sets_one(layer)).map(|(source, _)| source.to_string()).collect();
        return Err(ConfigError { source_name: sources.join(" and "), message });
    }
    if config.cluster.standby
        && config.storage.wal_archive_dir.trim().is_empty()
        && config.storage.wal_restore_command.trim().is_empty()
    {
        return Err(ConfigError {
            source_name: layers.iter().map(|(source, _)| source.to_string()).collect::<Vec<_>>().join(" and "),
            message: "`cluster.standby` is true, but neither `storage.wal_archive_dir` nor \
                      `storage.wal_restore_command` says where the archive it follows is"
                .into(),
        });
    }
    if !config.cluster.peers.is_empty() {
        let checked = if config.cluster.standby {
            Err("`cluster.standby` and `cluster.peers`: a standby follows the WAL archive, outside the Raft group; \
                 give it no peers"
                .to_string())
        } else {
            config.cluster.voters().map(drop)
        };
        if let Err(message) = checked {
            let sets_cluster = |layer: &toml::Table| layer.contains_key("cluster");
            let sources: Vec<String> =
                layers.iter().filter(|(_, layer)| sets_cluster(layer)).map(|(source, _)| source.to_string()).collect();
            return Err(ConfigError { source_name: sources.join(" and "), message });
        }
    }
    if let Some(toml::Value::Table(security)) = merged.get_mut("security") {
        for (_, value) in security.iter_mut() {
            if value.as_str().is_some_and(|v| !v.is_empty()) {
                *value = toml::Value::String("<redacted>".into());
            }
        }
    }
    config.effective_toml = format!(
        "# The effective settings of the server that took this backup (secrets redacted).\n{}",
        toml::to_string(&merged).unwrap_or_default()
    );
    Ok(config)
}

fn error(source: &Source, message: String) -> ConfigError {
    ConfigError { source_name: source.to_string(), message }
}

/// A one-key table for `key` (searched in every section) set to `value`,
/// typed as the default is.
fn single(defaults: &toml::Table, key: &str, value: &str) -> Result<toml::Table, String> {
    let (section, default) = std::iter::once((None, defaults))
        .chain(defaults.iter().filter_map(|(name, v)| v.as_table().map(|t| (Some(name.as_str()), t))))
        .find_map(|(section, table)| table.get(key).filter(|v| !v.is_table()).map(|v| (section, v)))
        .ok_or_else(|| format!("unknown setting `{key}`"))?;
    let typed = match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            value.trim().parse().map_err(|_| format!("`{key}` must be a whole number, not {value:?}"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value.trim().parse().map_err(|_| format!("`{key}` must be true or false, not {value:?}"))?,
        ),
        _ => toml::Value::String(value.to_string()),
    };
    let mut leaf = toml::Table::new();
    leaf.insert(key.to_string(), typed);
    Ok(match section {
        None => leaf,
        Some(section) => {
            let mut outer = toml::Table::new();
            outer.insert(section.to_string(), toml::Value::Table(leaf));
            outer
        }
    })
}

fn check_keys(known: &toml::Table, given: &toml::Table, prefix: &str) -> Result<(), String> {
    for (key, value) in given {
        let path = format!("{prefix}{key}");
        match (known.get(key), value) {
            (None, _) => {
                let expected: Vec<String> = known.keys().map(|k| format!("{prefix}{k}")).collect();
                return Err(format!("unknown key `{path}` (known keys here: {})", expected.join(", ")));
            }
            (Some(toml::Value::Table(known)), toml::Value::Table(given)) => {
                check_keys(known, given, &format!("{path}."))?;
            }
            (Some(toml::Value::Table(_)), _) => return Err(format!("`{path}` must be a section ([{path}])")),
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// Every setting of `table` on its own: its dotted path and a table holding
/// just it (inside its section).
fn leaves(table: &toml::Table, prefix: &str) -> Vec<(String, toml::Table)> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (path, leaf) in leaves(inner, &format!("{prefix}{key}.")) {
                    let mut outer = toml::Table::new();
                    outer.insert(key.clone(), toml::Value::Table(leaf));
                    out.push((path, outer));
                }
            }
            value => {
                let mut leaf = toml::Table::new();
                leaf.insert(key.clone(), value.clone());
                out.push((format!("{prefix}{key}"), leaf));
            }
        }
    }
    out
}

fn overlay(base: &mut toml::Table, layer: &toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(layer)) => overlay(base, layer),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn validate(table: toml::Table) -> Result<Config, String> {
    let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
    let segment = config.storage.wal_segment_size.0;
    if !segment.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&segment) {
        return Err(format!("`storage.wal_segment_size` must be a power of two from 1MB to 1GB, not {segment} bytes"));
    }
    if config.storage.buffer_pool_size.0 < 1 << 20 {
        return Err("`storage.buffer_pool_size` must be at least 1MB".into());
    }
    if config.max_connections == 0 {
        return Err("`max_connections` must be at least 1".into());
    }
    if config.storage.checkpoint_interval.0 < Duration::from_millis(100) {
        return Err("`storage.checkpoint_interval` must be at least 100ms".into());
    }
    if config.cluster.raft_log_compact_entries == 0 {
        return Err("`cluster.raft_log_compact_entries` must be at least 1".into());
    }
    Ok(config)
}

impl ClusterConfig {
    /// Whether this server is a node of a Raft group.
    pub fn is_raft(&self) -> bool {
        !self.peers.is_empty() && !self.standby
    }

    /// The voters `peers` names, by id, each with its Raft address. This
    /// node must be one of them.
    pub fn voters(&self) -> Result<Vec<(u64, String)>, String> {
        let mut voters: Vec<(u64, String)> = Vec::new();
        for peer in &self.peers {
            let (id, addr) = peer
                .split_once('@')
                .and_then(|(id, addr)| Some((id.trim().parse::<u64>().ok().filter(|id| *id != 0)?, addr.trim())))
                .filter(|(_, addr)| addr.contains(':'))
                .ok_or_else(|| format!("`cluster.peers`: {peer:?} is not \"ID@HOST:PORT\" with a non-zero ID"))?;
            if voters.iter().any(|(known, _)| *known == id) {
                return Err(format!("`cluster.peers`: node {id} is named twice"));
            }
            voters.push((id, addr.to_string()));
        }
        voters.sort();
        if !voters.iter().any(|(id, _)| *id == self.node_id) {
            return Err(format!("`cluster.peers` does not name this node, `cluster.node_id` = {}", self.node_id));
        }
        Ok(voters)
    }

    /// Where this node listens for its peers: `raft_addr`, or its own
    /// entry in `peers`.
    pub fn listen_addr(&self) -> Result<String, String> {
        if !self.raft_addr.trim().is_empty() {
            return Ok(self.raft_addr.trim().to_string());
        }
        let voters = self.voters()?;
        Ok(voters.into_iter().find(|(id, _)| *id == self.node_id).map(|(_, addr)| addr).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn archiving_needs_exactly_one_destination_and_the_error_names_every_source() {
        let path = Path::new("/etc/thunderdb.toml");
        let file = "[storage]\nwal_archive_enabled = true\nwal_archive_dir = \"/a\"\n";
        assert!(load(Some((path, file)), &[], &[]).unwrap().storage.archive_mode().unwrap().is_some());
        let both = env(&[("THUNDERDB_WAL_ARCHIVE_COMMAND", "cp %f /b/%n")]);
        let err = load(Some((path, file)), &both, &[]).unwrap_err();
        assert_eq!(
            err.source_name,
            "config file /etc/thunderdb.toml and environment variable THUNDERDB_WAL_ARCHIVE_COMMAND"
        );
        assert!(err.message.contains("are both set"), "{err}");
        let err = load(None, &env(&[("THUNDERDB_WAL_ARCHIVE_ENABLED", "true")]), &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("THUNDERDB_WAL_ARCHIVE_ENABLED: `storage.wal_archive_enabled` is true, but neither"),
            "{err}"
        );
    }

    #[test]
    fn the_defaults_are_the_specs() {
        let config = load(None, &[], &[]).unwrap();
        assert_eq!((config.listen_addr.as_str(), config.pg_port, config.http_port), ("127.0.0.1", 5432, 8088));
        assert_eq!(config.data_dir, PathBuf::from("./thunderdb-data/data"));
        assert_eq!(config.storage.checkpoint_interval, HumanDuration(Duration::from_secs(30)));
        assert_eq!(config.storage.max_wal_size, ByteSize(512 << 20));
        assert_eq!(config.storage.wal_segment_size, ByteSize(16 << 20));
        assert_eq!(config.storage.buffer_pool_size, ByteSize(128 << 20));
        assert_eq!(config.max_connections, 100);
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("16 mb"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1TB"), Ok(1 << 40));
        assert!(parse_size("12XB").unwrap_err().contains("\"12XB\""));
        assert!(parse_size("MB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let file = "pg_port = 6000\nhttp_port = 6001\n[storage]\nmax_wal_size = \"1GB\"\n";
        let config = load(
            Some((Path::new("/etc/thunderdb.toml"), file)),
            &env(&[("THUNDERDB_PG_PORT", "7000"), ("THUNDERDB_MAX_WAL_SIZE", "2GB"), ("HOME", "/root")]),
            &[("pg_port", "8000".into())],
        )
        .unwrap();
        assert_eq!(config.pg_port, 8000, "flag");
        assert_eq!(config.storage.max_wal_size, ByteSize(2 << 30), "environment over file");
        assert_eq!(config.http_port, 6001, "file over default");
    }

    #[test]
    fn an_unknown_key_or_bad_value_names_its_source_and_key() {
        let path = Path::new("/etc/thunderdb.toml");
        let err = load(Some((path, "[storage]\nwal_archive_enabeld = true\n")), &[], &[]).unwrap_err();
        assert_eq!(err.source_name, "config file /etc/thunderdb.toml");
        assert!(err.message.contains("unknown key `storage.wal_archive_enabeld`"), "{err}");

        let err = load(Some((path, "[storage]\nmax_wal_size = \"12XB\"\n")), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("/etc/thunderdb.toml") && err.message.contains("12XB"), "{err}");

        let err = load(Some((path, "pg_port = \"five\"\n")), &[], &[]).unwrap_err();
        assert!(err.message.starts_with("`pg_port`: ") && err.message.contains("\"five\""), "{err}");

        let err = load(Some((path, "[storage]\nwal_segment_size = \"3MB\"\n")), &[], &[]).unwrap_err();
        assert!(err.message.contains("wal_segment_size") && err.message.contains("power of two"), "{err}");

        let err = load(None, &env(&[("THUNDERDB_PG_PORTT", "1")]), &[]).unwrap_err();
        assert_eq!(err.source_name, "environment variable THUNDERDB_PG_PORTT");
        assert!(err.message.contains("unknown setting `pg_portt`"), "{err}");

        let err = load(None, &env(&[("THUNDERDB_PG_PORT", "many")]), &[]).unwrap_err();
        assert!(err.message.contains("whole number"), "{err}");

        let err = load(Some((path, "pg_port = \n")), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("/etc/thunderdb.toml"), "a syntax error names the file: {err}");

        let err = load(None, &env(&[("THUNDERDB_WAL_COMPRESSION", "lz4")]), &[]).unwrap_err();
        assert!(err.message.contains("wal_compression") && err.message.contains("`zstd`"), "{err}");
    }

    #[test]
    fn wal_compression_defaults_to_zstd_and_can_be_turned_off() {
        use crate::wal::WalCompression;
        assert_eq!(load(None, &[], &[]).unwrap().storage.wal_compression, WalCompression::Zstd);
        let config = load(None, &env(&[("THUNDERDB_WAL_COMPRESSION", "off")]), &[]).unwrap();
        assert_eq!(config.storage.wal_compression, WalCompression::Off);
        assert_eq!(config.engine().wal_compression, WalCompression::Off);
    }

    #[test]
    fn a_raft_group_names_this_node_among_its_peers_and_each_peer_once() {
        let path = Path::new("/etc/thunderdb.toml");
        let group = |cluster: &str| load(Some((path, &format!("[cluster]\n{cluster}"))), &[], &[]);
        let peers = r#"peers = ["2@127.0.0.1:7002", "1@127.0.0.1:7001", "3@127.0.0.1:7003"]"#;
        let config = group(&format!("node_id = 1\n{peers}")).unwrap();
        assert!(config.cluster.is_raft());
        assert_eq!(config.cluster.voters().unwrap()[0], (1, "127.0.0.1:7001".to_string()));
        assert_eq!(config.cluster.listen_addr().unwrap(), "127.0.0.1:7001");
        let outside = group(&format!("node_id = 4\n{peers}")).unwrap_err().to_string();
        assert!(outside.contains("does not name this node") && outside.contains("/etc/thunderdb.toml"), "{outside}");
        let twice = group(r#"peers = ["1@a:1", "1@b:2"]"#).unwrap_err().to_string();
        assert!(twice.contains("node 1 is named twice"), "{twice}");
        let malformed = group(r#"peers = ["a:1"]"#).unwrap_err().to_string();
        assert!(malformed.contains("\"a:1\" is not \"ID@HOST:PORT\""), "{malformed}");
        let standby = format!("[storage]\nwal_archive_dir = \"/a\"\n[cluster]\nstandby = true\n{peers}");
        let both = load(Some((path, &standby)), &[], &[]).unwrap_err().to_string();
        assert!(both.contains("give it no peers"), "{both}");
        assert!(!load(None, &[], &[]).unwrap().cluster.is_raft());
        assert_eq!(load(None, &[], &[]).unwrap().cluster.raft_log_compact_entries, 4096);
        let never = group(&format!("node_id = 1\n{peers}\nraft_log_compact_entries = 0")).unwrap_err().to_string();
        assert!(never.contains("`cluster.raft_log_compact_entries` must be at least 1"), "{never}");
    }
}
