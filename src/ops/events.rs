//! `sentinel-gateway events`: the audit log from the command line, newest first, by user,
//! type and age, as a table or one JSON object per line.

use std::io::Write;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::config::Config;
use crate::ops::admin::{api, database, find};
use crate::store::audit::{self, Kind};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events about this user: an email (in any letter case) or an id (also of a user
    /// who is gone).
    #[arg(long)]
    user: Option<String>,
    /// Only events of this type, e.g. `login.failed`.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only events of this last stretch of time: `90s`, `15m`, `1h`, `7d`.
    #[arg(long)]
    since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Config, args: EventsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Checked before any connection: a typo is a usage error, whatever the database.
    let kind = args
        .kind
        .as_deref()
        .map(|k| {
            Kind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                anyhow!("no event type {k:?}; the types: {}", known.join(", "))
            })
        })
        .transpose()?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse_age(s).map(|age| chrono::Utc::now() - age))
        .transpose()?;
    if !(1..=100_000).contains(&args.limit) {
        bail!("--limit must be between 1 and 100000");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let db = database(config).await?;
        let user_id = match args.user.as_deref() {
            None => None,
            Some(who) => match find(&db, who).await {
                Ok(user) => Some(user.id),
                // A user who is gone is still named in the events about them.
                Err(_) if !who.contains('@') => Some(who.to_string()),
                Err(e) => return Err(e),
            },
        };
        let query = audit::Query {
            user_id,
            kind,
            since,
            before: None,
        };
        let (events, _) = audit::page(&db, &query, args.limit).await.map_err(api)?;
        if !args.json {
            writeln!(
                out,
                "{:<27}  {:<24}  {:<36}  {:<36}  {:<15}  DETAIL",
                "AT", "TYPE", "USER", "ACTOR", "ADDRESS"
            )?;
        }
        for e in events {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            } else {
                writeln!(
                    out,
                    "{:<27}  {:<24}  {:<36}  {:<36}  {:<15}  {}",
                    e.at,
                    e.kind,
                    e.user_id.as_deref().unwrap_or("-"),
                    e.actor_id.as_deref().unwrap_or("-"),
                    e.client_address.as_deref().unwrap_or("-"),
                    e.detail
                )?;
            }
        }
        Ok(())
    })
}

/// `90s`, `15m`, `1h`, `7d`: a whole number and a unit.
fn parse_age(text: &str) -> anyhow::Result<chrono::Duration> {
    let bad =
        || anyhow!("--since takes a number and s, m, h or d (90s, 15m, 1h, 7d), got {text:?}");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(seconds)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .map(chrono::Duration::seconds)
        .ok_or_else(bad)
}

/// Deletes audit events past `audit.retention_days`: once the database is ready, then hourly
/// (every instance does it; deleting what another already deleted costs nothing).
pub struct Pruner {
    pub app: std::sync::Arc<crate::own::app::App>,
    pub retention_days: u32,
}

/// Rows deleted by one statement: no statement holds many locks or a long transaction.
const PRUNE_BATCH: i64 = 5_000;
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Pruner {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut wait = std::time::Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if !self.app.is_ready() {
                continue;
            }
            wait = PRUNE_EVERY;
            let pruned = async {
                let db = crate::store::users::client(&self.app.pool).await?;
                audit::prune(&db, self.retention_days, PRUNE_BATCH).await
            };
            match pruned.await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    events = n,
                    days = self.retention_days,
                    "audit events past retention deleted"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune the audit log; trying again in a minute");
                    wait = std::time::Duration::from_secs(60);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_number_and_a_unit() {
        assert_eq!(parse_age("90s").unwrap(), chrono::Duration::seconds(90));
        assert_eq!(parse_age("1h").unwrap(), chrono::Duration::hours(1));
        assert_eq!(parse_age("7d").unwrap(), chrono::Duration::days(7));
        for bad in [
            "",
            "h",
            "1",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
            "1 h",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
