//! `tandem wal-fetch`: a standby's `restore_command`, reading the relay's WAL.
//!
//! Place in the data flow: the last hop, relay → standby. PostgreSQL runs
//! `tandem wal-fetch --from SOURCE %f %p` whenever a standby needs a WAL file it cannot
//! stream (the primary is gone, or it fell behind what the primary kept). SOURCE is the
//! relay's WAL directory (same host) or its status endpoint `http://HOST:PORT` (another
//! host). The segment the relay is still writing is served as it is: recovery stops at its
//! last valid record, then tries streaming and asks again later.
//!
//! Exit codes follow `restore_command`'s contract: 0 = the file is at %p, 1 = not available
//! (also on errors, which go to stderr and so into the server's log). Never above 125:
//! PostgreSQL treats that as fatal.

use std::path::Path;
use std::time::Duration;

use super::segments;

/// How long one HTTP fetch may take (a 16 MiB segment over a slow link included).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a fetch failed (as opposed to the file not being there).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The name is not a WAL file name.
    #[error("{0:?} is not a WAL segment or history file name")]
    BadName(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The relay's HTTP endpoint could not be used.
    #[error("fetching {url}: {reason}")]
    Http {
        /// What was asked for.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Copies WAL file `name` from `source` to `dest`. `Ok(false)`: the relay does not have it.
pub async fn fetch(source: &str, name: &str, dest: &Path) -> Result<bool, FetchError> {
    if !segments::is_servable_name(name) {
        return Err(FetchError::BadName(name.to_owned()));
    }
    match source.strip_prefix("http://") {
        Some(authority) => fetch_http(authority.trim_end_matches('/'), name, dest).await,
        None => fetch_file(Path::new(source), name, dest),
    }
}

fn fetch_file(dir: &Path, name: &str, dest: &Path) -> Result<bool, FetchError> {
    let Some(path) = segments::find(dir, name) else { return Ok(false) };
    match std::fs::copy(&path, dest) {
        Ok(_) => Ok(true),
        // Trimmed or renamed (.partial → complete) between the look-up and the copy.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match segments::find(dir, name) {
            Some(path) => std::fs::copy(&path, dest)
                .map(|_| true)
                .map_err(|source| FetchError::Io { what: format!("copy {}", path.display()), source }),
            None => Ok(false),
        },
        Err(source) => Err(FetchError::Io { what: format!("copy {} to {}", path.display(), dest.display()), source }),
    }
}

/// One GET of `/wal/NAME` from the relay's status endpoint.
async fn fetch_http(authority: &str, name: &str, dest: &Path) -> Result<bool, FetchError> {
    let url = format!("http://{authority}/wal/{name}");
    let http = |reason: String| FetchError::Http { url: url.clone(), reason };
    let client = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().map_err(|e| http(e.to_string()))?;
    let response = client.get(&url).send().await.map_err(|e| http(e.to_string()))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    let body = response.bytes().await.map_err(|e| http(e.to_string()))?;
    if !status.is_success() {
        return Err(http(format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    std::fs::write(dest, &body)
        .map_err(|source| FetchError::Io { what: format!("write {}", dest.display()), source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_from_a_directory_and_says_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000003";
        std::fs::write(dir.path().join(format!("{name}.partial")), b"wal").unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let src = dir.path().to_str().unwrap();
        assert!(fetch(src, name, &dest).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"wal");
        assert!(!fetch(src, "00000002.history", &dest).await.unwrap());
        assert!(matches!(fetch(src, "../../etc/passwd", &dest).await, Err(FetchError::BadName(_))));
    }
}
