//! Per-request state carried between Pingora's hooks.

use crate::identity::Identity;
use crate::limits::{RateHeaders, Tier};
use crate::providers::body::RequestInfo;
use crate::providers::errors::ErrorKind;
use crate::providers::Provider;
use crate::sinks::InflightGuard;
use crate::store::{LimitKind, Reservation};
use crate::usage::Meter;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A refusal decided after Pingora already owns the response path (body
/// phase): `fail_to_proxy` writes it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    pub retry_after: Option<u64>,
    pub limit: Option<LimitKind>,
}

#[derive(Default)]
pub enum BodyPhase {
    /// Not yet read.
    #[default]
    Pending,
    /// Read and approved in `request_filter` (small bodies): this is what
    /// goes upstream, replacing the replayed retry buffer.
    Prepared(Bytes),
    /// Being collected chunk by chunk in `request_body_filter` (large or
    /// chunked bodies), released whole once approved.
    Collecting(BytesMut),
    /// Sent upstream.
    Sent,
    /// No body to inspect (GET/DELETE): passed through as is.
    Passthrough,
}

pub struct Ctx {
    pub request_id: String,
    pub started: Instant,
    pub provider: Option<Arc<Provider>>,
    pub identity: Option<Arc<Identity>>,
    pub tier: Option<Arc<Tier>>,
    pub slot_held: bool,
    pub reservation: Option<Reservation>,
    pub rate: RateHeaders,
    pub body: BodyPhase,
    pub info: Option<RequestInfo>,
    pub refusal: Option<Refusal>,
    /// Upstream was contacted: the request yields a usage record.
    pub proxied: bool,
    pub status: Option<u16>,
    pub ttfb: Option<Duration>,
    pub meter: Option<Meter>,
    pub response_done: bool,
    pub client_gone: bool,
    pub drain_until: Option<Instant>,
    pub inflight: Option<InflightGuard>,
    /// The store took over the finish at the last byte: `logging` leaves
    /// the slot, the reservation and the day's totals alone.
    pub store_settled: bool,
    pub finished: bool,
}

impl Ctx {
    pub fn new(request_id: String) -> Self {
        Self {
            request_id,
            started: Instant::now(),
            provider: None,
            identity: None,
            tier: None,
            slot_held: false,
            reservation: None,
            rate: RateHeaders::default(),
            body: BodyPhase::Pending,
            info: None,
            refusal: None,
            proxied: false,
            status: None,
            ttfb: None,
            meter: None,
            response_done: false,
            client_gone: false,
            drain_until: None,
            inflight: None,
            store_settled: false,
            finished: false,
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.model.as_deref())
    }
}

/// A random 128-bit request id, hex encoded. Client-supplied ids are never
/// trusted or echoed.
pub fn new_request_id() -> String {
    let n: u128 = rand::random();
    format!("req_{n:032x}")
}
