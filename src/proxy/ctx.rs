//! Per-request state carried between Pingora's hooks.

use super::error::GatewayError;
use crate::identity::Identity;
use crate::limits::{RateHeaders, Team, Tier};
use crate::providers::body::RequestInfo;
use crate::providers::models::Deployment;
use crate::providers::reply::Reply;
use crate::providers::{Endpoint, Provider};
use crate::sinks::InflightGuard;
use crate::store::Reservation;
use crate::usage::Meter;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a request goes: the provider serving it and which endpoint it is.
#[derive(Clone)]
pub struct Routed {
    pub provider: Arc<Provider>,
    pub endpoint: Endpoint,
}

/// Who is calling, the tier whose limits apply, and the team (if any)
/// whose limits apply too.
#[derive(Clone)]
pub struct Caller {
    pub identity: Arc<Identity>,
    pub tier: Arc<Tier>,
    pub team: Option<Arc<Team>>,
}

/// What the store holds for one request until it is settled, in the
/// caller's own scope and in its team's. Exactly one party settles it —
/// the response's last byte, or the end of the request — by taking it out
/// of the context, so nothing is released twice or forgotten.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    pub own: Hold,
    /// Nothing held when the caller has no team.
    pub team: Hold,
}

/// One scope's part of a [`Lease`]: its concurrency slot and its budget
/// reservation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hold {
    pub slot_held: bool,
    pub reservation: Option<Reservation>,
    /// The scope has token or dollar limits: usage seen must be charged
    /// even where nothing was reserved (the store failed open).
    pub budgeted: bool,
}

#[derive(Default)]
pub enum BodyPhase {
    /// Not yet read.
    #[default]
    Pending,
    /// Being collected chunk by chunk in `request_body_filter` (large or
    /// chunked bodies), released whole once approved.
    Collecting(BytesMut),
    /// Approved: this is what goes upstream, on the first attempt and on
    /// every retry (it replaces whatever Pingora replays).
    Approved(Bytes),
    /// No body to inspect (`GET /v1/models`): passed through as is.
    Passthrough,
}

/// A client that left mid-response while its stream is still read.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub until: Instant,
}

pub struct Ctx {
    pub request_id: String,
    pub started: Instant,
    pub route: Option<Routed>,
    pub caller: Option<Caller>,
    pub lease: Option<Lease>,
    pub rate: RateHeaders,
    pub body: BodyPhase,
    pub info: Option<RequestInfo>,
    /// A refusal decided after Pingora took over the response path (body
    /// phase): `fail_to_proxy` writes it.
    pub refusal: Option<GatewayError>,
    /// An upstream was chosen: the request yields a usage record.
    pub proxied: bool,
    /// The current attempt's connection to its provider was made: it may
    /// have processed the request even without answering.
    pub reached: bool,
    pub status: Option<u16>,
    pub ttfb: Option<Duration>,
    pub meter: Option<Meter>,
    /// How the current attempt's answer is rewritten for the client (a
    /// cloud kind's event stream or errors), ahead of the meter.
    pub reply: Option<Reply>,
    pub response_done: bool,
    pub drain: Option<Drain>,
    /// An HTTP/2 client's stream, made to outlive its client (see `h2_drain`).
    pub h2_departure: Option<super::h2_drain::Departure>,
    pub inflight: Option<InflightGuard>,
    pub attempts: Attempts,
    /// The answer's head is on its way to the client: from here on nothing
    /// fails over.
    pub response_started: bool,
    /// What the response cache did; `None` when it is off or the endpoint
    /// is never cached.
    pub cache: Option<super::cached::CacheState>,
    /// The request's journal entry, once noted: its record, or a cancel,
    /// releases it.
    pub journal: Option<crate::journal::Slot>,
    /// Guard rules that matched the request, sorted (the record's `guard`).
    pub guard: Vec<Arc<str>>,
    /// The request's trace, from its first attempt on; always `None` with
    /// telemetry off.
    pub trace: Option<Box<crate::telemetry::RequestTrace>>,
}

/// The deployments a request tries, and where it stands.
#[derive(Default)]
pub struct Attempts {
    /// Decided once the body (and so the model) is known; empty for a
    /// request without one, which goes to the endpoint's first provider.
    pub plan: Vec<Deployment>,
    /// The plan comes from a `models:` entry (its deployments cool down
    /// after a failure).
    pub routed: bool,
    /// Attempts started; the current one is `plan[started - 1]`.
    pub started: usize,
    /// The next attempt stays on the current deployment (a pooled
    /// connection it had closed: not its failure).
    pub again: bool,
    /// The current attempt's body: the approved one, under the deployment's
    /// model name.
    pub body: Option<Bytes>,
    /// The model name the current attempt sends upstream.
    pub upstream_model: Option<Arc<str>>,
    /// The current attempt's status is being failed over (raised in
    /// `upstream_response_filter`, seen again in `error_while_proxy`).
    pub failing_over: bool,
    /// An earlier attempt reached its provider and failed without an answer
    /// (a timeout, a reset): the provider may have processed, and billed, it.
    pub unanswered: bool,
    /// The current attempt's `authorization` when its deployment takes an
    /// OAuth token (Vertex), fetched before connecting.
    pub bearer: Option<http::HeaderValue>,
    /// Deployments of the plan passed over because they were at their
    /// `max_inflight` (never sent anything): not attempts.
    pub skipped: usize,
    /// The current deployment's `max_inflight` slot, held until the request
    /// ends or moves on.
    pub slot: Option<crate::shield::InflightSlot>,
    /// The request ends with this answer instead of an attempt's: every
    /// deployment left was at its `max_inflight` after an earlier attempt
    /// had reached a provider (so the request still gets its record).
    pub overloaded: Option<GatewayError>,
}

impl Attempts {
    pub fn current(&self) -> Option<&Deployment> {
        self.started.checked_sub(1).and_then(|i| self.plan.get(i))
    }

    /// Another deployment is left to try.
    pub fn left(&self) -> bool {
        self.started < self.plan.len()
    }

    /// Deployments actually tried (the record's `attempts`), at least 1.
    pub fn tried(&self) -> usize {
        self.started.saturating_sub(self.skipped).max(1)
    }

    /// An attempt before the current one was really made (not skipped).
    pub fn made_one(&self) -> bool {
        self.started.saturating_sub(self.skipped) > 0
    }
}

impl Ctx {
    pub fn new(request_id: String) -> Self {
        Self {
            request_id,
            started: Instant::now(),
            route: None,
            caller: None,
            lease: None,
            rate: RateHeaders::default(),
            body: BodyPhase::Pending,
            info: None,
            refusal: None,
            proxied: false,
            reached: false,
            status: None,
            ttfb: None,
            meter: None,
            reply: None,
            response_done: false,
            drain: None,
            h2_departure: None,
            inflight: None,
            attempts: Attempts::default(),
            response_started: false,
            cache: None,
            journal: None,
            guard: Vec::new(),
            trace: None,
        }
    }

    /// The model the client asked for.
    pub fn model(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.model.as_deref())
    }

    pub fn provider(&self) -> Option<&Arc<Provider>> {
        self.route.as_ref().map(|r| &r.provider)
    }

    pub fn endpoint(&self) -> Option<Endpoint> {
        self.route.as_ref().map(|r| r.endpoint)
    }

    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.caller.as_ref().map(|c| &c.identity)
    }

    pub fn sub(&self) -> &str {
        self.identity().map_or("", |i| i.sub.as_str())
    }

    pub fn team(&self) -> Option<&Arc<Team>> {
        self.caller.as_ref().and_then(|c| c.team.as_ref())
    }
}

/// A random 128-bit request id, hex encoded. Client-supplied ids are never
/// trusted or echoed.
pub fn new_request_id() -> String {
    request_id_of(rand::random())
}

/// `req_` and `n` as 32 lowercase hex digits.
fn request_id_of(n: u128) -> String {
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    crate::hex::push(&mut id, &n.to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn request_ids_are_the_formatted_hex(n in proptest::prelude::any::<u128>()) {
            proptest::prop_assert_eq!(request_id_of(n), format!("req_{n:032x}"));
        }
    }

    #[test]
    fn request_id_edges() {
        assert_eq!(request_id_of(0), format!("req_{}", "0".repeat(32)));
        assert_eq!(request_id_of(u128::MAX), format!("req_{}", "f".repeat(32)));
        assert_eq!(
            request_id_of(0xab << 120 | 1),
            format!("req_ab{}1", "0".repeat(29))
        );
    }
}
