//! Response bodies read with a size cap: whatever a server sends (a huge reply, an endless
//! stream), the flow holds at most `cap` bytes of it, so memory stays flat.

use reqwest::Response;

/// The price API's default cap (SOURCE_MAX_BYTES): a cryptocompare `pricemulti` reply for
/// dozens of symbols and currencies is a few KiB, so 1 MiB leaves room and stays small.
pub const SOURCE_DEFAULT: usize = 1 << 20;
/// Prefect replies: the largest is a filter of 200 flow runs (~3 KiB each).
pub const PREFECT: usize = 8 << 20;
/// ECS task metadata, container credentials, S3 error documents.
pub const SMALL: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    /// Above the cap: `announced` when the Content-Length said so before anything was read.
    #[error(
        "reply larger than the {cap}-byte cap ({})",
        if *announced { "announced by its Content-Length; not read" } else { "stopped reading at the cap" }
    )]
    TooLarge { cap: usize, announced: bool },
    #[error("{0}")]
    Transport(String),
}

/// Reads the body chunk by chunk, refusing it as soon as it would pass `cap`.
pub async fn read_capped(mut resp: Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge {
            cap,
            announced: true,
        });
    }
    let mut out = Vec::with_capacity(
        resp.content_length()
            .map_or(0, |n| usize::try_from(n).unwrap_or(cap).min(cap)),
    );
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(crate::logs::http_error(e)))?
    {
        if out.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge {
                cap,
                announced: false,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `read_capped`, as text (invalid UTF-8 replaced).
pub async fn text_capped(resp: Response, cap: usize) -> Result<String, BodyError> {
    read_capped(resp, cap)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `read_capped`, parsed as JSON.
pub async fn json_capped<T: serde::de::DeserializeOwned>(
    resp: Response,
    cap: usize,
) -> Result<T, BodyError> {
    let bytes = read_capped(resp, cap).await?;
    serde_json::from_slice(&bytes).map_err(|e| BodyError::Transport(format!("not JSON ({e})")))
}

/// The process's peak resident memory in KiB (VmHWM), for the stop summary; None off Linux.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }
}
