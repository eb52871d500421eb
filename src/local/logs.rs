//! `logs` on the local target: the services' container output, each line prefixed by its
//! container; with `--follow` the streams of every container are merged as lines arrive.

use super::engine::Engine;
use crate::cli::Logs as LogsArgs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ui::Ui;
use futures::StreamExt;

/// Print the logs; returns how many lines were printed.
pub async fn print(c: &Config, args: &LogsArgs, ui: &Ui) -> Result<u64> {
    if let Some(s) = &args.service
        && !c.services.contains_key(s)
    {
        return Err(
            Error::bad_input(format!("no service named {s} in the config")).with_help(format!(
                "services: {}",
                c.services.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        );
    }
    let engine = Engine::connect().await?;
    let instances = engine
        .instances(&c.project, args.service.as_deref())
        .await?;
    if instances.is_empty() {
        ui.warn(format!(
            "no containers of {} on the local target; run `deployer up --target local`",
            c.project
        ));
        return Ok(0);
    }
    let since = args.since.map(|d| {
        let now = super::state::now();
        i64::try_from(now.saturating_sub(d.as_secs())).unwrap_or(0)
    });
    let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(0);
    let streams = instances.iter().map(|i| {
        let name = format!("{:<width$}", i.name);
        engine
            .logs(&i.name, args.follow, since, args.tail)
            .map(move |chunk| (name.clone(), chunk))
    });
    let mut merged = futures::stream::select_all(streams.map(Box::pin));
    let mut lines = 0u64;
    let mut partial: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        let next = tokio::select! {
            n = merged.next() => n,
            _ = crate::interrupt::cancelled() => None,
        };
        let Some((name, chunk)) = next else { break };
        let chunk = chunk
            .map_err(|e| Error::docker(format!("reading the logs of {}", name.trim_end()), e))?;
        // A chunk may end mid-line: keep the rest until the next chunk of that container.
        let buf = partial.entry(name.clone()).or_default();
        buf.push_str(&chunk.to_string());
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            ui.result(format!("{name} | {}", line.trim_end_matches(['\n', '\r'])));
            lines += 1;
        }
    }
    for (name, rest) in partial {
        if !rest.is_empty() {
            ui.result(format!("{name} | {rest}"));
            lines += 1;
        }
    }
    Ok(lines)
}
