//! The one retry policy: capped exponential backoff inside an overall
//! deadline, with a bounded number of attempts. Every transport (IMDS,
//! artifact downloads, EBS blocks) uses this; there are no stray sleeps
//! elsewhere.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delay before the second attempt.
    pub initial: Duration,
    /// The delay doubles per attempt up to this cap.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
    /// Give up after this many attempts.
    pub max_attempts: u32,
}

impl Policy {
    /// For one HTTP request to a nearby service (IMDS, a mirror, EBS):
    /// a few quick retries.
    pub const fn quick() -> Self {
        Policy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
            max_attempts: 6,
        }
    }

    /// Delay before attempt `n` (1-based; attempt 1 has none).
    pub(crate) fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt - 2);
        self.initial.saturating_mul(factor).min(self.max_delay)
    }
}

/// What one attempt says about the error it hit.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Worth trying again (5xx, throttling, timeout, reset).
    Retry(E),
    /// Final (404, 403, bad input).
    Fail(E),
}

/// Runs `op` until it succeeds, fails finally, runs out of attempts or
/// passes the deadline. The last error is returned as it is; callers put
/// what they were doing into it. `op` receives the attempt number.
pub async fn retry<T, E, F, Fut>(policy: &Policy, mut op: F) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
{
    let start = Instant::now();
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                let delay = policy.delay_before(attempt + 1);
                if attempt >= policy.max_attempts || start.elapsed() + delay >= policy.deadline {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_attempts: u32) -> Policy {
        Policy {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            deadline: Duration::from_secs(5),
            max_attempts,
        }
    }

    #[test]
    fn delays_double_and_are_capped() {
        let p = Policy::quick();
        assert_eq!(p.delay_before(1), Duration::ZERO);
        assert_eq!(p.delay_before(2), Duration::from_millis(100));
        assert_eq!(p.delay_before(3), Duration::from_millis(200));
        assert_eq!(p.delay_before(30), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = retry(&fast(5), |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(Attempt::Retry("busy"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn stops_at_max_attempts_and_on_final_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(&fast(4), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Retry("busy")) }
        })
        .await;
        assert_eq!(r, Err("busy"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(&fast(4), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Fail("gone")) }
        })
        .await;
        assert_eq!(r, Err("gone"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_at_the_deadline() {
        let p = Policy {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_millis(50),
            deadline: Duration::from_millis(120),
            max_attempts: 100,
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(&p, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Retry("busy")) }
        })
        .await;
        assert!(r.is_err());
        assert!(calls.load(Ordering::SeqCst) <= 3);
    }
}
