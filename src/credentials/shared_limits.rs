//! The rate limits' shared stage (`[rate_limit] backend = "redis"`): the same GCRA as the local
//! stage, kept in Redis so that every instance on one Redis counts against one budget.
//!
//! Each attempt is one `EVALSHA` of [`GCRA`]: it reads Redis's clock (so the instances' clocks
//! do not matter), checks every bucket the attempt is charged to (a login: its address and its
//! account), and charges them all only if all allow it. A bucket is one key holding its
//! theoretical arrival time in microseconds, with an expiry at the moment it is full again, so
//! Redis holds nothing for clients that stopped. A restarted Redis loses the counts (every
//! bucket starts full) and the script (reloaded by `EVAL` on `NOSCRIPT`).
//!
//! Redis is reached through a few multiplexed connections, each carrying many checks at once;
//! they connect lazily and reconnect on their own. A check that gets no answer within
//! `redis_timeout_ms` (Redis down, hung or unreachable) is a failure, and
//! `rate_limit.redis_failure` decides: `open` lets the attempt through under the local limits
//! alone, `closed` answers 503. Failures are counted, and logged when Redis goes away and
//! comes back, not once per attempt.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{RateLimitConfig, RedisFailure};
use crate::metrics::{metrics, Limit};

/// KEYS: the buckets. ARGV: per bucket, its emission interval and its burst (cells).
/// Returns `{0, 0}` when the attempt is allowed (and charged to every bucket), else
/// `{bucket number (from 1), microseconds until it would be allowed}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local worst, wait = 0, 0
local next_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local over = next_tat - now - burst * interval
  if over > wait then worst, wait = i, over end
  next_tats[i] = next_tat
end
if worst > 0 then return {worst, math.ceil(wait)} end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.max(1, math.ceil((next_tats[i] - now) / 1000))
  redis.call('SET', key, string.format('%.0f', next_tats[i]), 'PX', ttl_ms)
end
return {0, 0}
";

/// One bucket an attempt is charged to.
pub struct Bucket {
    pub limit: Limit,
    /// What is counted: a client address (`ip_key`) or an account digest, as text.
    pub key: String,
    /// Attempts allowed per `period_secs` (and at once, after a quiet spell).
    pub cells: u32,
    pub period_secs: u64,
}

impl Bucket {
    /// `n` attempts a minute.
    pub fn per_minute(limit: Limit, key: String, n: u32) -> Bucket {
        Bucket {
            limit,
            key,
            cells: n,
            period_secs: 60,
        }
    }
}

/// Why the shared stage did not allow an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedRefusal {
    Limited {
        limit: Limit,
        retry_after_secs: u64,
    },
    /// Redis failed and `redis_failure = "closed"`.
    Unavailable,
}

pub struct SharedLimits {
    client: redis::Client,
    /// `rate_limit.redis_connections`.
    count: usize,
    connections: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    failure: RedisFailure,
    /// Whether the last check reached Redis (for logging transitions only).
    up: AtomicBool,
}

/// Whether `url` is one the Redis client accepts (checked when the configuration loads).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("required when backend = \"redis\"".into());
    }
    redis::Client::open(url)
        .map(|_| ())
        // The client's message names the URL's problem, never the URL (it may hold a password).
        .map_err(|e| format!("not a Redis URL ({})", kind(&e)))
}

fn kind(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

impl SharedLimits {
    /// Connections are made when the first check needs them (inside the runtime that serves
    /// it), so the gateway starts, and serves under `redis_failure`, while Redis is away.
    pub fn new(config: &RateLimitConfig) -> Result<SharedLimits, String> {
        let client = match &config.redis_ca_file {
            None => redis::Client::open(config.redis_url.expose()),
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read rate_limit.redis_ca_file {}: {e}",
                        path.display()
                    )
                })?;
                redis::Client::build_with_tls(
                    config.redis_url.expose(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
        }
        .map_err(|e| {
            format!(
                "not a Redis URL, or a CA file that does not load ({})",
                kind(&e)
            )
        })?;
        Ok(SharedLimits {
            client,
            count: config.redis_connections.max(1),
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
            script: redis::Script::new(GCRA),
            prefix: config.redis_key_prefix.clone(),
            timeout: Duration::from_millis(config.redis_timeout_ms),
            failure: config.redis_failure,
            up: AtomicBool::new(true),
        })
    }

    fn connections(&self) -> Result<&[ConnectionManager], String> {
        if let Some(made) = self.connections.get() {
            return Ok(made);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per reconnection: the next check starts another, and a check never
            // waits beyond the timeout whatever happens.
            .set_number_of_retries(0);
        let made = (0..self.count)
            .map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("Redis client ({})", kind(&e)))?;
        // Another check may have made them meanwhile; the first set made is kept.
        Ok(self.connections.get_or_init(|| made))
    }

    /// One attempt charged to every bucket in `buckets`, or to none of them.
    pub async fn check(&self, buckets: &[Bucket]) -> Result<(), SharedRefusal> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            let cells = bucket.cells.max(1);
            let interval_us = bucket.period_secs.max(1) * 1_000_000 / u64::from(cells);
            invocation
                .key(format!(
                    "{}:{}:{}",
                    self.prefix,
                    bucket.limit.label(),
                    bucket.key
                ))
                .arg(interval_us)
                .arg(cells);
        }
        let connections = match self.connections() {
            Ok(connections) => connections,
            Err(e) => return self.failed(&e),
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % connections.len().max(1);
        let Some(connection) = connections.get(i) else {
            return self.failed("no connection configured");
        };
        let mut connection = connection.clone();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(usize, u64)>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok((0, _))) => self.reached(),
            Ok(Ok((n, wait_us))) => {
                self.reached();
                let limit = match buckets.get(n - 1) {
                    Some(bucket) => bucket.limit,
                    None => return self.failed("the script named no bucket of this check"),
                };
                metrics().rate_limited(limit);
                // Whole seconds, rounded up, at least one.
                let retry_after_secs = wait_us.div_ceil(1_000_000).max(1);
                return Err(SharedRefusal::Limited {
                    limit,
                    retry_after_secs,
                });
            }
            Ok(Err(e)) => return self.failed(&e.to_string()),
            Err(_) => return self.failed("no answer within rate_limit.redis_timeout_ms"),
        }
        Ok(())
    }

    fn reached(&self) {
        metrics().redis_up.set(1);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: rate limits are shared across instances again");
        }
    }

    fn failed(&self, error: &str) -> Result<(), SharedRefusal> {
        let open = self.failure == RedisFailure::Open;
        metrics().redis_failed(open);
        metrics().redis_up.set(0);
        if self.up.swap(false, Ordering::Relaxed) {
            if open {
                tracing::warn!(
                    %error,
                    "Redis is unavailable: rate limits are counted by each instance alone until \
                     it answers (rate_limit.redis_failure = \"open\")"
                );
            } else {
                tracing::warn!(
                    %error,
                    "Redis is unavailable: rate-limited endpoints answer 503 until it answers \
                     (rate_limit.redis_failure = \"closed\")"
                );
            }
        }
        if open {
            Ok(())
        } else {
            Err(SharedRefusal::Unavailable)
        }
    }
}
