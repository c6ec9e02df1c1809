//! Where the CLI finds its server and key: `--url`/`--key`, then `RUNFLEET_URL`/`RUNFLEET_KEY`
//! (clap reads both), then the config file, then the default URL. The config file is TOML in
//! the user's config directory (`$XDG_CONFIG_HOME/runfleet/config.toml` on Linux), or the one
//! `--config`/`RUNFLEET_CLI_CONFIG` names (not `RUNFLEET_CONFIG`: the orchestrator and the
//! worker node read that one for their own config file). Since it may hold a key it is written
//! readable by its owner only (0600).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The URL used when none is given anywhere: the embedded fleet's.
pub const DEFAULT_URL: &str = "http://localhost:8080";

/// The config file's contents.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The server, `http://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The bearer key (the admin key or a user key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The config file's path: the one given, else `<config dir>/runfleet/config.toml`.
pub fn path(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| dirs::config_dir().map(|d| d.join("runfleet").join("config.toml")))
}

/// The config file at `path`; empty when there is none.
pub fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `config` to `path`, readable and writable by its owner only.
pub fn save(path: &Path, config: &ConfigFile) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(config)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // A file that existed before keeps its mode on open: narrow it too.
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The server and key in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The server.
    pub url: String,
    /// The key, if any.
    pub key: Option<String>,
}

/// Flags and environment (already merged by clap) over the file, over the default.
pub fn resolve(url: Option<String>, key: Option<String>, file: ConfigFile) -> Resolved {
    Resolved {
        url: url.or(file.url).unwrap_or_else(|| DEFAULT_URL.to_owned()),
        key: key.or(file.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_default() {
        let file = ConfigFile {
            url: Some("http://file:1".into()),
            key: Some("file-key".into()),
        };
        let r = resolve(Some("http://flag:1".into()), None, file.clone());
        assert_eq!(r.url, "http://flag:1");
        assert_eq!(r.key.as_deref(), Some("file-key"));
        assert_eq!(resolve(None, None, ConfigFile::default()).url, DEFAULT_URL);
        assert_eq!(resolve(None, None, file).url, "http://file:1");
    }

    #[cfg(unix)]
    #[test]
    fn the_config_file_is_written_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("runfleet-cli-{}", std::process::id()));
        let path = dir.join("sub").join("config.toml");
        let config = ConfigFile {
            url: Some("http://h:1".into()),
            key: Some("k".into()),
        };
        save(&path, &config).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(Some(&path)).unwrap(), config);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
