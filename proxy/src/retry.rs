//! Route retries: which failures are retried, how long to wait, the retry budget,
//! and whether the request can be sent again at all.
//!
//! A request body can only be sent again if it was kept: when a route retries (or
//! mirrors), bodies of at most [`MAX_BUFFERED_BODY`] bytes with a known length are
//! buffered before the first attempt. A request whose body was streamed is never
//! retried. A buffered body that reached the upstream (anything but a connect
//! failure) is sent again only for idempotent methods.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use meshgate_crds::route::{Retry, RetryTrigger};

/// Largest request body kept for retries and mirrors.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Concurrency counters of one route, shared by its requests.
#[derive(Debug, Default)]
pub struct Budget {
    active: AtomicU32,
    retrying: AtomicU32,
}

/// Counts a request as active while alive.
pub struct Active<'a>(&'a Budget);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A retry in progress, released when dropped.
pub struct RetryPermit<'a>(&'a Budget);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Relaxed);
    }
}

/// A compiled retry policy.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    five_xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    status_codes: Vec<u16>,
    pub base: Duration,
    pub max: Duration,
    budget_percent: u32,
    min_retry_concurrency: u32,
    pub per_attempt_timeout: Option<Duration>,
    pub budget: Arc<Budget>,
}

/// What an attempt ended with, for [`RetryPolicy::should_retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: nothing was sent.
    Connect,
    /// The connection failed after the request was (partly) sent.
    Reset,
    /// The attempt timed out.
    Timeout,
    /// The upstream answered with this status.
    Status(StatusCode),
}

/// RFC 9110 9.2.2 idempotent methods.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl RetryPolicy {
    /// Compiles `retry`; `backend_timeout` is the route's backendRequest timeout,
    /// the default of each attempt.
    pub fn compile(retry: &Retry, backend_timeout: Option<Duration>) -> Result<Self, String> {
        let duration = |d: &Option<meshgate_crds::Duration>| -> Result<Option<Duration>, String> {
            d.as_ref()
                .map(|d| d.to_std().map_err(|e| e.to_string()))
                .transpose()
        };
        let attempts = u32::try_from(retry.attempts.unwrap_or(2)).unwrap_or(0);
        let (triggers, status_codes) = match &retry.retry_on {
            Some(on) => (
                on.triggers.clone(),
                on.http_status_codes
                    .iter()
                    .filter_map(|c| u16::try_from(*c).ok())
                    .collect(),
            ),
            None => (
                vec![
                    RetryTrigger::ConnectFailure,
                    RetryTrigger::RefusedStream,
                    RetryTrigger::GatewayError,
                ],
                Vec::new(),
            ),
        };
        let has = |t| triggers.contains(&t);
        let backoff = retry.backoff.as_ref();
        let base = duration(&backoff.and_then(|b| b.base_interval.clone()))?
            .unwrap_or(Duration::from_millis(25));
        let max = duration(&backoff.and_then(|b| b.max_interval.clone()))?
            .unwrap_or(base * 10)
            .max(base);
        let budget = retry.budget.as_ref();
        Ok(RetryPolicy {
            attempts,
            five_xx: has(RetryTrigger::FiveXx),
            gateway_error: has(RetryTrigger::GatewayError),
            reset: has(RetryTrigger::Reset) || has(RetryTrigger::RefusedStream),
            connect_failure: has(RetryTrigger::ConnectFailure),
            status_codes,
            base,
            max,
            budget_percent: budget
                .and_then(|b| b.percent)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(20),
            min_retry_concurrency: budget
                .and_then(|b| b.min_retry_concurrency)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(3),
            per_attempt_timeout: duration(&retry.per_attempt_timeout)?
                .filter(|d| !d.is_zero())
                .or(backend_timeout),
            budget: Arc::new(Budget::default()),
        })
    }

    /// Whether `failure` is one this policy retries.
    pub fn retriable(&self, failure: Failure) -> bool {
        match failure {
            Failure::Connect => self.connect_failure || self.five_xx,
            Failure::Reset => self.reset || self.five_xx,
            Failure::Timeout => self.gateway_error || self.five_xx,
            Failure::Status(s) => {
                (self.five_xx && s.is_server_error())
                    || (self.gateway_error && matches!(s.as_u16(), 502..=504))
                    || self.status_codes.contains(&s.as_u16())
            }
        }
    }

    /// Whether a request may be sent again after `failure`: its body was kept, and
    /// it either never reached the upstream or is idempotent.
    pub fn may_resend(failure: Failure, body_kept: bool, method: &Method) -> bool {
        body_kept && (failure == Failure::Connect || idempotent(method))
    }

    pub fn start(&self) -> Active<'_> {
        self.budget.active.fetch_add(1, Relaxed);
        Active(&self.budget)
    }

    /// A permit for one more concurrent retry, if the budget allows it.
    pub fn permit(&self) -> Option<RetryPermit<'_>> {
        let active = self.budget.active.load(Relaxed);
        let allowed =
            (active.saturating_mul(self.budget_percent) / 100).max(self.min_retry_concurrency);
        let previous = self.budget.retrying.fetch_add(1, Relaxed);
        let permit = RetryPermit(&self.budget);
        (previous < allowed).then_some(permit)
    }

    /// Wait before retry number `n` (1-based): exponential from `base`, capped at
    /// `max`, with jitter between half and all of it.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_crds::route::{Backoff, RetryBudget, RetryOn};

    fn policy(retry: Retry) -> RetryPolicy {
        RetryPolicy::compile(&retry, None).unwrap()
    }

    #[test]
    fn defaults_retry_connect_failures_and_gateway_errors() {
        let p = policy(Retry::default());
        assert_eq!(p.attempts, 2);
        assert!(p.retriable(Failure::Connect));
        assert!(p.retriable(Failure::Status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!p.retriable(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        let codes = policy(Retry {
            retry_on: Some(RetryOn {
                triggers: vec![],
                http_status_codes: vec![409],
            }),
            ..Retry::default()
        });
        assert!(codes.retriable(Failure::Status(StatusCode::CONFLICT)));
        assert!(!codes.retriable(Failure::Connect));
    }

    #[test]
    fn resend_rules() {
        assert!(RetryPolicy::may_resend(
            Failure::Connect,
            true,
            &Method::POST
        ));
        assert!(!RetryPolicy::may_resend(
            Failure::Status(StatusCode::BAD_GATEWAY),
            true,
            &Method::POST
        ));
        assert!(RetryPolicy::may_resend(
            Failure::Status(StatusCode::BAD_GATEWAY),
            true,
            &Method::PUT
        ));
        assert!(!RetryPolicy::may_resend(
            Failure::Connect,
            false,
            &Method::GET
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(Retry {
            backoff: Some(Backoff {
                base_interval: Some("10ms".into()),
                max_interval: Some("40ms".into()),
            }),
            ..Retry::default()
        });
        for _ in 0..50 {
            let first = p.backoff(1);
            assert!((5..=10).contains(&first.as_millis()), "{first:?}");
            let late = p.backoff(10);
            assert!((20..=40).contains(&late.as_millis()), "{late:?}");
        }
    }

    #[test]
    fn budget_caps_concurrent_retries() {
        let p = policy(Retry {
            budget: Some(RetryBudget {
                percent: Some(0),
                min_retry_concurrency: Some(1),
            }),
            ..Retry::default()
        });
        let _active = p.start();
        let first = p.permit();
        assert!(first.is_some());
        assert!(p.permit().is_none());
        drop(first);
        assert!(p.permit().is_some());
    }
}
