//! Policy: which tier and team a caller is in, what that tier allows (its limits and
//! model allow-list), and the rate-limit headers a caller is shown. The
//! counting itself is the [`Store`](crate::store::Store)'s.

mod glob;
mod teams;
mod tiers;

pub use glob::{glob_match, is_glob};
pub use teams::{Team, Teams};
pub use tiers::{Tier, Tiers};

/// Values for the `x-ratelimit-*` response headers; `None` where the tier
/// sets no such limit (an unlimited tier advertises no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
}
