//! Per-client rate limits and a concurrency limit with load shedding.
//!
//! Each client has a token bucket per class of call (writes, reads, resolution,
//! oversight). A call takes one token; when the bucket is empty the call is refused with
//! RESOURCE_EXHAUSTED and the delay after which a token will be there. Like Pix DICT's
//! anti-scraping buckets, a lookup that finds nothing (an unknown citizen) is charged
//! extra after the fact and may put the bucket into debt, so enumerating ids is slow
//! and visible while ordinary payroll lookups are not affected. (A crate such as
//! governor cannot charge after the fact, which is why the bucket is written here.)
//!
//! The concurrency limit refuses calls beyond a fixed number in flight at once,
//! immediately, instead of queueing them without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Classes of calls, each with its own bucket per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcClass {
    Write,
    Read,
    Resolve,
    Oversight,
    /// Records and ids in bulk streams (BatchResolve, PopulationSync), one token each.
    Bulk,
}

impl RpcClass {
    /// The class's name in the `[rate_limits]` settings.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcClass::Write => "write",
            RpcClass::Read => "read",
            RpcClass::Resolve => "resolve",
            RpcClass::Oversight => "oversight",
            RpcClass::Bulk => "bulk",
        }
    }
}

/// One bucket's shape.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens the bucket holds (the largest burst).
    pub burst: f64,
}

/// Rate-limit settings (`[rate_limits]` in the configuration).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub write: BucketConfig,
    pub read: BucketConfig,
    pub resolve: BucketConfig,
    pub oversight: BucketConfig,
    /// Per record or id in a bulk stream; a stream over its rate is slowed down, not cut.
    pub bulk: BucketConfig,
    /// Extra tokens a lookup of an unknown citizen costs.
    pub unknown_citizen_cost: f64,
    /// Most unary calls served at once; more are refused immediately.
    pub max_concurrent_calls: usize,
    /// Most streams (Subscribe, BatchResolve, the sync streams) open at once, counted
    /// apart from unary calls so that long-lived streams cannot starve them.
    pub max_concurrent_streams: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let bucket = |per_second, burst| BucketConfig { per_second, burst };
        RateLimitConfig {
            write: bucket(500.0, 1000.0),
            read: bucket(500.0, 1000.0),
            resolve: bucket(20_000.0, 40_000.0),
            oversight: bucket(10.0, 50.0),
            bulk: bucket(1_000_000.0, 1_000_000.0),
            unknown_citizen_cost: 20.0,
            max_concurrent_calls: 4096,
            max_concurrent_streams: 512,
        }
    }
}

impl RateLimitConfig {
    fn bucket(&self, class: RpcClass) -> BucketConfig {
        match class {
            RpcClass::Write => self.write,
            RpcClass::Read => self.read,
            RpcClass::Resolve => self.resolve,
            RpcClass::Oversight => self.oversight,
            RpcClass::Bulk => self.bulk,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// The client's bucket is empty; retry after this long.
    RateLimited(Duration),
    /// Too many calls in flight.
    Overloaded,
}

/// The buckets of every client, and the in-flight limit.
pub struct Limits {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(String, RpcClass), Bucket>>,
    in_flight: Arc<Semaphore>,
    streams: Arc<Semaphore>,
}

/// Whether an admitted call is a unary call or a stream: each kind has its own pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Unary,
    Stream,
}

/// Held for the duration of an admitted call.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    pub fn new(config: RateLimitConfig) -> Limits {
        Limits {
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
            streams: Arc::new(Semaphore::new(config.max_concurrent_streams.max(1))),
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one call of `class` by `client` at `now`, taking one token and one slot
    /// of the pool for its shape (unary calls and streams have separate pools).
    pub fn admit(
        &self,
        client: &str,
        class: RpcClass,
        shape: Shape,
        now: Instant,
    ) -> Result<Admission, Refused> {
        let pool = match shape {
            Shape::Unary => &self.in_flight,
            Shape::Stream => &self.streams,
        };
        let permit = pool
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Overloaded)?;
        self.take(client, class, now)?;
        Ok(Admission { _permit: permit })
    }

    /// Charges `cost` more tokens for a call already served; the bucket may go into
    /// debt (down to minus its burst), delaying the client's next calls.
    pub fn charge(&self, client: &str, class: RpcClass, cost: f64, now: Instant) {
        let shape = self.config.bucket(class);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = refilled(&mut buckets, client, class, shape, now);
        bucket.tokens = (bucket.tokens - cost).max(-shape.burst);
    }

    /// Charges `cost` tokens for work a stream is about to do and answers how long the
    /// stream should pause first so that the client stays within its rate.
    pub fn pace(&self, client: &str, class: RpcClass, cost: f64, now: Instant) -> Duration {
        let shape = self.config.bucket(class);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = refilled(&mut buckets, client, class, shape, now);
        bucket.tokens -= cost;
        if bucket.tokens >= 0.0 || shape.per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-bucket.tokens / shape.per_second)
    }

    /// The extra cost of a lookup that found no citizen.
    pub fn unknown_citizen_cost(&self) -> f64 {
        self.config.unknown_citizen_cost
    }

    fn take(&self, client: &str, class: RpcClass, now: Instant) -> Result<(), Refused> {
        let shape = self.config.bucket(class);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = refilled(&mut buckets, client, class, shape, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - bucket.tokens;
        let wait = if shape.per_second > 0.0 {
            Duration::from_secs_f64(missing / shape.per_second)
        } else {
            Duration::from_secs(3600)
        };
        Err(Refused::RateLimited(wait))
    }
}

fn refilled<'a>(
    buckets: &'a mut HashMap<(String, RpcClass), Bucket>,
    client: &str,
    class: RpcClass,
    shape: BucketConfig,
    now: Instant,
) -> &'a mut Bucket {
    let bucket = buckets.entry((client.to_owned(), class)).or_insert(Bucket {
        tokens: shape.burst,
        at: now,
    });
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * shape.per_second).min(shape.burst);
    bucket.at = now;
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: f64, burst: f64) -> Limits {
        let b = BucketConfig { per_second, burst };
        Limits::new(RateLimitConfig {
            write: b,
            read: b,
            resolve: b,
            oversight: b,
            bulk: b,
            unknown_citizen_cost: 5.0,
            max_concurrent_calls: 2,
            max_concurrent_streams: 1,
        })
    }

    #[test]
    fn a_stream_over_its_rate_is_paced_not_refused() {
        let l = limits(1000.0, 1000.0);
        let t0 = Instant::now();
        assert_eq!(l.pace("a", RpcClass::Bulk, 1000.0, t0), Duration::ZERO);
        let wait = l.pace("a", RpcClass::Bulk, 500.0, t0);
        assert_eq!(wait, Duration::from_millis(500));
        // Another client is not slowed down.
        assert_eq!(l.pace("b", RpcClass::Bulk, 10.0, t0), Duration::ZERO);
    }

    #[test]
    fn a_burst_is_served_then_the_client_waits_for_refill() {
        let l = limits(10.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(l.admit("a", RpcClass::Resolve, Shape::Unary, t0).unwrap());
        }
        let Err(Refused::RateLimited(wait)) = l.admit("a", RpcClass::Resolve, Shape::Unary, t0)
        else {
            panic!("the fourth call must be limited");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l
            .admit(
                "a",
                RpcClass::Resolve,
                Shape::Unary,
                t0 + Duration::from_millis(100)
            )
            .is_ok());
    }

    #[test]
    fn clients_and_classes_have_separate_buckets() {
        let l = limits(1.0, 1.0);
        let t0 = Instant::now();
        drop(l.admit("a", RpcClass::Resolve, Shape::Unary, t0).unwrap());
        assert!(l.admit("a", RpcClass::Resolve, Shape::Unary, t0).is_err());
        assert!(l.admit("b", RpcClass::Resolve, Shape::Unary, t0).is_ok());
        assert!(l.admit("a", RpcClass::Read, Shape::Unary, t0).is_ok());
    }

    #[test]
    fn misses_put_the_bucket_into_debt() {
        let l = limits(10.0, 10.0);
        let t0 = Instant::now();
        drop(
            l.admit("scraper", RpcClass::Resolve, Shape::Unary, t0)
                .unwrap(),
        );
        l.charge("scraper", RpcClass::Resolve, 20.0, t0);
        // 9 - 20 = -11, floored at -10: a whole second of refill before the next call.
        assert!(l
            .admit(
                "scraper",
                RpcClass::Resolve,
                Shape::Unary,
                t0 + Duration::from_millis(900)
            )
            .is_err());
        assert!(l
            .admit(
                "scraper",
                RpcClass::Resolve,
                Shape::Unary,
                t0 + Duration::from_millis(1100)
            )
            .is_ok());
    }

    #[test]
    fn calls_beyond_the_concurrency_limit_are_shed_at_once() {
        let l = limits(1000.0, 1000.0);
        let t0 = Instant::now();
        let a = l.admit("a", RpcClass::Read, Shape::Unary, t0).unwrap();
        let _b = l.admit("b", RpcClass::Read, Shape::Unary, t0).unwrap();
        assert!(matches!(
            l.admit("c", RpcClass::Read, Shape::Unary, t0),
            Err(Refused::Overloaded)
        ));
        drop(a);
        assert!(l.admit("c", RpcClass::Read, Shape::Unary, t0).is_ok());
    }

    #[test]
    fn open_streams_do_not_take_the_unary_calls_slots() {
        let l = limits(1000.0, 1000.0);
        let t0 = Instant::now();
        let _stream = l.admit("feed", RpcClass::Read, Shape::Stream, t0).unwrap();
        assert!(matches!(
            l.admit("feed", RpcClass::Read, Shape::Stream, t0),
            Err(Refused::Overloaded)
        ));
        let _a = l.admit("a", RpcClass::Resolve, Shape::Unary, t0).unwrap();
        let _b = l.admit("b", RpcClass::Resolve, Shape::Unary, t0).unwrap();
    }
}
