//! Leases on Redis (`lease.lua`, `lease_return.lua`): see
//! [`crate::store::leased`] for what they are and docs/redis-store.md for
//! the key layout they share with the per-request scripts.

use super::batch::Op;
use super::keys::{Keys, LOG_TTL_MS, SLOT_TTL_MS};
use super::replies::{int_at, parse_admit, parse_reserve, reply_array};
use super::scripts::{limit_arg, lua_f64, lua_int, reserve_call};
use super::RedisStore;
use crate::store::leased::{AdmitAsk, BudgetGrant, LeaseAsk, LeaseGrant, LeaseReturn, LeaseSource};
use crate::store::window::{tokens_remaining, DAY_MS, MINUTE_MS};
use crate::store::{Admission, AdmitLimits, Reserved, StoreError};
use async_trait::async_trait;
use fred::prelude::Value;

/// Requests taken by one lease: bounds a slice's size (it is one member of
/// the sliding log whatever its size, `lua/log.lua`).
pub const MAX_LEASED_REQUESTS: u64 = 512;

/// `lease_return.lua`'s arguments for `r` at `now_ms`.
fn return_args(r: &LeaseReturn, now_ms: u64) -> Vec<String> {
    let mut a = Vec::with_capacity(12);
    match r.admit {
        Some(back) => a.extend([
            format!("{:016x}", back.id),
            back.used.to_string(),
            back.requests.to_string(),
            back.free_slots.to_string(),
        ]),
        None => a.extend(["", "0", "0", "0"].map(String::from)),
    }
    a.push(SLOT_TTL_MS.to_string());
    match r.budget {
        Some(b) => a.extend([
            "1".into(),
            (now_ms / MINUTE_MS).to_string(),
            (now_ms / DAY_MS).to_string(),
            (b.at_ms / MINUTE_MS).to_string(),
            (b.at_ms / DAY_MS).to_string(),
            lua_int(b.tokens).to_string(),
            lua_f64(b.usd),
        ]),
        None => a.extend(["0", "0", "0", "0", "0", "0", "0"].map(String::from)),
    }
    a
}

fn subject_keys(keys: &Keys, sub: &str) -> Vec<String> {
    let k = keys.subject(sub);
    vec![k.req(), k.conc(), k.bud(), k.req_weights()]
}

/// `lease.lua`'s keys and arguments.
fn lease_call(keys: &Keys, ask: &LeaseAsk<'_>) -> (Vec<String>, Vec<String>) {
    let now = ask.now_ms;
    let admit = ask.admit.unwrap_or(AdmitAsk {
        limits: AdmitLimits::default(),
        requests: 0,
        slots: 0,
    });
    let mut a = vec![
        now.to_string(),
        (now as i128 - MINUTE_MS as i128).to_string(),
        limit_arg(admit.limits.requests_per_minute),
        limit_arg(admit.limits.max_concurrent),
        format!("{:016x}", ask.id),
        ask.until_ms.to_string(),
        admit.requests.clamp(1, MAX_LEASED_REQUESTS).to_string(),
        admit.slots.max(1).to_string(),
        LOG_TTL_MS.to_string(),
        SLOT_TTL_MS.to_string(),
    ];
    match ask.budget {
        Some(b) => {
            let (_, ra) = reserve_call(
                keys,
                true,
                ask.sub,
                now,
                b.need.tokens,
                b.need.usd,
                b.need.limits,
            );
            a.push("1".into());
            a.extend(ra);
            a.push(lua_int(b.tokens.max(b.need.tokens)).to_string());
            a.push(lua_f64(b.usd.max(b.need.usd)));
        }
        None => a.extend(std::iter::repeat_n(String::from("0"), 13)),
    }
    match ask.give_back {
        Some(r) => {
            a.push("1".into());
            a.extend(return_args(r, now));
        }
        None => a.push("0".into()),
    }
    debug_assert_eq!(a.len(), if ask.give_back.is_some() { 36 } else { 24 });
    (subject_keys(keys, ask.sub), a)
}

/// `lease.lua`'s answer to `ask`.
fn parse_lease(reply: Value, ask: &LeaseAsk<'_>) -> Result<LeaseGrant, StoreError> {
    let a = reply_array(reply, "lease")?;
    let limits = ask.admit.map(|x| x.limits).unwrap_or_default();
    if int_at(&a, 0, "lease")? != 0 {
        // {1, oldest} or {2}: admit.lua's refusals, read the same way.
        return match parse_admit(Value::Array(a), ask.now_ms, limits)? {
            Admission::Refused(r) => Ok(LeaseGrant::Refused(r)),
            Admission::Admitted { .. } => Err(StoreError::Protocol("lease: bad refusal".into())),
        };
    }
    let requests = int_at(&a, 1, "lease")?.max(0) as u64;
    let before = int_at(&a, 2, "lease")?;
    let slots = int_at(&a, 3, "lease")?.max(0) as u64;
    let budget = match (ask.budget, a.get(4)) {
        (Some(want), Some(Value::Array(b))) => {
            let code = int_at(b, 0, "lease budget")?;
            if code != 0 {
                let reply = Value::Array(b.iter().take(3).cloned().collect());
                match parse_reserve(
                    reply,
                    ask.now_ms,
                    want.need.tokens,
                    want.need.usd,
                    want.need.limits,
                )? {
                    Reserved::Refused(r) => Some(BudgetGrant::Refused(r)),
                    Reserved::Reserved { .. } => {
                        return Err(StoreError::Protocol("lease: bad budget refusal".into()))
                    }
                }
            } else {
                let cur = int_at(b, 1, "lease budget")?;
                let prev = int_at(b, 2, "lease budget")?;
                let tokens = int_at(b, 3, "lease budget")?.max(0) as u64;
                let usd = b
                    .get(4)
                    .and_then(|v| v.as_string())
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|u| u.is_finite())
                    .ok_or_else(|| StoreError::Protocol("lease: bad usd granted".into()))?;
                Some(BudgetGrant::Granted {
                    tokens,
                    usd,
                    tokens_left_minute: want.need.limits.tokens_per_minute.map(|tpm| {
                        tokens_remaining(tpm, ask.now_ms, cur, prev).saturating_add(tokens)
                    }),
                })
            }
        }
        (Some(_), _) => return Err(StoreError::Protocol("lease: budget reply missing".into())),
        (None, _) => None,
    };
    Ok(LeaseGrant::Granted {
        requests,
        requests_before: (before >= 0 && limits.requests_per_minute.is_some())
            .then_some(before as u64),
        slots,
        budget,
    })
}

#[async_trait]
impl LeaseSource for RedisStore {
    async fn lease(&self, ask: &LeaseAsk<'_>) -> Result<LeaseGrant, StoreError> {
        let (keys, args) = lease_call(&self.ctx.keys, ask);
        let reply = self.run(Op::Lease, keys, args).await?;
        parse_lease(reply, ask)
    }

    async fn give_back(&self, returns: &[LeaseReturn]) -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        // Polled together, so they are queued together and share a round
        // trip.
        let calls = returns.iter().filter(|r| !r.is_empty()).map(|r| {
            self.run(
                Op::LeaseReturn,
                subject_keys(&self.ctx.keys, &r.sub),
                return_args(r, now),
            )
        });
        let mut first_err = None;
        for r in futures_util::future::join_all(calls).await {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::leased::{AdmitBack, BudgetBack};

    #[test]
    fn a_return_fills_lease_return_lua_s_twelve_arguments() {
        let r = LeaseReturn {
            sub: "u".into(),
            admit: Some(AdmitBack {
                id: 1,
                used: 2,
                requests: 5,
                free_slots: 1,
            }),
            budget: Some(BudgetBack {
                at_ms: 120_000,
                tokens: 10,
                usd: 0.5,
            }),
        };
        let a = return_args(&r, 125_000);
        assert_eq!(a.len(), 12);
        assert_eq!(a[0], "0000000000000001");
        assert_eq!(&a[5..], ["1", "2", "0", "2", "0", "10", "0.5"]);
        let none = LeaseReturn {
            sub: "u".into(),
            admit: None,
            budget: None,
        };
        assert!(none.is_empty());
        assert_eq!(return_args(&none, 0).len(), 12);
    }
}
