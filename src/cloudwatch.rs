//! CloudWatch Logs: `deployer logs` on AWS, the last lines of a failed task for the failure
//! report, and the Container Insights log group `destroy` removes. Each service logs to
//! `/ecs/<project>/<service>` with the awslogs driver, stream prefix = service name, so one
//! task's stream is `<service>/<service>/<task id>`.

use crate::cli::Logs as LogsArgs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ui::Ui;
use aws_sdk_cloudwatchlogs::Client;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Without `--since`, `logs` shows this much history (as `aws logs tail` does).
pub const DEFAULT_SINCE: Duration = Duration::from_secs(600);
const FOLLOW_POLL: Duration = Duration::from_secs(2);

/// The log stream of one task's container.
pub fn task_stream(service: &str, task_id: &str) -> String {
    format!("{service}/{service}/{task_id}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The last `n` lines a task wrote (best effort: none when the stream is missing).
pub async fn task_tail(logs: &Client, group: &str, stream: &str, n: i32) -> Vec<String> {
    match logs
        .get_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .limit(n)
        .start_from_head(false)
        .send()
        .await
    {
        Ok(out) => out
            .events()
            .iter()
            .filter_map(|e| e.message().map(|m| m.trim_end().to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `logs` on AWS: each service's log group, lines prefixed by the task id.
pub async fn print(logs: &Client, c: &Config, args: &LogsArgs, ui: &Ui) -> Result<u64> {
    let services: Vec<&String> = c
        .services
        .keys()
        .filter(|s| args.service.as_ref().is_none_or(|only| only == *s))
        .collect();
    if services.is_empty() {
        return Err(Error::bad_input(format!(
            "no service named {} in the config",
            args.service.as_deref().unwrap_or_default()
        ))
        .with_help(format!(
            "services: {}",
            c.services.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let since = args.since.unwrap_or(DEFAULT_SINCE);
    let mut from = now_ms() - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut printed = 0u64;
    loop {
        let mut newest = from;
        for service in &services {
            let g = c.names().log_group(service);
            let lines = fetch(logs, &g, from, args.tail, &mut seen).await?;
            if lines.is_none() {
                ui.warn(format!(
                    "no log group {g}: {service} has not been deployed (run `deployer up`)"
                ));
                continue;
            }
            for (ts, stream, message) in lines.unwrap_or_default() {
                newest = newest.max(ts);
                let task = stream.rsplit('/').next().unwrap_or(&stream);
                ui.result(format!("{service}/{task} | {}", message.trim_end()));
                printed += 1;
            }
        }
        if !args.follow {
            return Ok(printed);
        }
        // The next poll overlaps by a second; `seen` drops what was printed already.
        from = newest.saturating_sub(1000).max(from);
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = crate::interrupt::cancelled() => return Ok(printed),
        }
    }
}

/// The events of a group since `from_ms`, oldest first: (timestamp, stream, message); with
/// `tail`, only the last that many. None when the group does not exist.
async fn fetch(
    logs: &Client,
    group: &str,
    from_ms: i64,
    tail: Option<u32>,
    seen: &mut BTreeSet<String>,
) -> Result<Option<Vec<(i64, String, String)>>> {
    let cap = tail.map_or(usize::MAX, |t| t as usize);
    let mut out: VecDeque<(i64, String, String)> = VecDeque::new();
    let mut next = None;
    loop {
        let page = match logs
            .filter_log_events()
            .log_group_name(group)
            .start_time(from_ms)
            .set_next_token(next)
            .send()
            .await
        {
            Ok(p) => p,
            Err(e)
                if e.as_service_error()
                    .is_some_and(aws_sdk_cloudwatchlogs::operation::filter_log_events::FilterLogEventsError::is_resource_not_found_exception) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(crate::aws::failure(&format!("read log group {group}"), e));
            }
        };
        for e in page.events() {
            let id = e.event_id().map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{}:{}:{}",
                    e.log_stream_name().unwrap_or(""),
                    e.timestamp().unwrap_or(0),
                    e.message().unwrap_or("")
                )
            });
            if !seen.insert(id) {
                continue;
            }
            out.push_back((
                e.timestamp().unwrap_or(0),
                e.log_stream_name().unwrap_or("").to_string(),
                e.message().unwrap_or("").to_string(),
            ));
            if out.len() > cap {
                out.pop_front();
            }
        }
        next = page.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by_key(|e| e.0);
    Ok(Some(v))
}

/// Container Insights writes to `/aws/ecs/containerinsights/<cluster>/performance`, a group
/// the cluster stack does not own: delete it with the cluster. True when it existed.
pub async fn delete_insights_group(logs: &Client, cluster: &str) -> Result<bool> {
    let name = crate::names::insights_log_group(cluster);
    match logs.delete_log_group().log_group_name(&name).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(aws_sdk_cloudwatchlogs::operation::delete_log_group::DeleteLogGroupError::is_resource_not_found_exception) =>
        {
            Ok(false)
        }
        Err(e) => Err(crate::aws::failure(&format!("delete log group {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_the_awslogs_driver() {
        assert_eq!(
            crate::names::Names::new("demo").log_group("web"),
            "/ecs/demo/web"
        );
        assert_eq!(super::task_stream("web", "0f1e"), "web/web/0f1e");
    }
}
