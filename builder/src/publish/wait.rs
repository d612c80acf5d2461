//! The one describe-until-state loop: describe a resource (AMI, snapshot)
//! until it reaches the wanted state, under a retry policy; a failed
//! describe call is retried, a state that cannot become the wanted one
//! ends the wait at once.

use std::future::Future;

use keel_bootstrap::retry::{retry, Attempt, Policy};

use super::error::Error;

/// What one describe call saw.
pub struct Seen<T> {
    /// The state EC2 reported.
    pub state: String,
    /// Why it is in that state, as EC2 says (or a default).
    pub reason: String,
    /// The resource, when EC2 returned one.
    pub value: Option<T>,
}

/// Describes `what` in `region` until its state is `wanted`, then returns
/// the resource. While `keep_waiting(state)` holds the wait goes on (until
/// `policy`'s deadline, then [`Error::Wait`]); any other state is
/// [`Error::BadState`] at once.
pub async fn until_state<T, F, Fut>(
    policy: &Policy,
    what: &str,
    region: &str,
    wanted: &'static str,
    keep_waiting: impl Fn(&str) -> bool,
    describe: F,
) -> Result<T, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Seen<T>, Error>>,
{
    retry(policy, |_| async {
        let seen = describe().await.map_err(Attempt::Retry)?;
        match seen.value {
            Some(value) if seen.state == wanted => Ok(value),
            _ if keep_waiting(&seen.state) => Err(Attempt::Retry(Error::Wait {
                what: what.to_string(),
                region: region.into(),
                wanted,
                state: seen.state,
            })),
            _ => Err(Attempt::Fail(Error::BadState {
                what: what.to_string(),
                region: region.into(),
                state: seen.state,
                message: seen.reason,
            })),
        }
    })
    .await
}
