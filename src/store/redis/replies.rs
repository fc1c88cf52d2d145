//! Script and command replies decoded into the store's answers.

use crate::store::window::*;
use crate::store::*;
use fred::prelude::Value;

/// `reserve.lua`'s answer to a request for `tokens` and `usd` at `now_ms`.
pub(super) fn parse_reserve(
    reply: Value,
    now_ms: u64,
    tokens: u64,
    usd: f64,
    limits: BudgetLimits,
) -> Result<Reserved, StoreError> {
    let a = reply_array(reply, "reserve")?;
    let code = int_at(&a, 0, "reserve")?;
    let cur = int_at(&a, 1, "reserve")?;
    let prev = int_at(&a, 2, "reserve")?;
    Ok(match code {
        0 => Reserved::granted(tokens, usd, now_ms, &limits, cur, prev),
        1 => Reserved::Refused(Refusal {
            limit: Limit::TokensPerMinute,
            retry_after_secs: tokens_retry_after(
                cur,
                prev,
                now_ms,
                limits.tokens_per_minute.unwrap_or(0),
                tokens,
            ),
        }),
        2 => Reserved::Refused(Refusal {
            limit: Limit::TokensPerDay,
            retry_after_secs: until_next_day(now_ms),
        }),
        3 => Reserved::Refused(Refusal {
            limit: Limit::UsdPerDay,
            retry_after_secs: until_next_day(now_ms),
        }),
        _ => {
            return Err(StoreError::Protocol(format!(
                "unexpected reserve reply: {a:?}"
            )))
        }
    })
}

/// `admit.lua`'s answer under `limits` at `now_ms`.
pub(super) fn parse_admit(
    reply: Value,
    now_ms: u64,
    limits: AdmitLimits,
) -> Result<Admission, StoreError> {
    let a = reply_array(reply, "admit")?;
    Ok(match int_at(&a, 0, "admit")? {
        0 => Admission::Admitted {
            remaining_requests: limits
                .requests_per_minute
                .map(|_| int_at(&a, 1, "admit").map(|r| r.max(0) as u64))
                .transpose()?,
            slot_held: limits.max_concurrent.is_some(),
        },
        1 => {
            let oldest = a.get(1).and_then(score).unwrap_or(now_ms);
            Admission::Refused(Refusal {
                limit: Limit::RequestsPerMinute,
                retry_after_secs: requests_retry_after(oldest, now_ms),
            })
        }
        2 => Admission::Refused(Refusal {
            limit: Limit::MaxConcurrent,
            retry_after_secs: 1,
        }),
        _ => {
            return Err(StoreError::Protocol(format!(
                "unexpected admit reply: {a:?}"
            )))
        }
    })
}

/// `revoke.lua` answers the new epoch, or 0 when the revocation was
/// already in force.
pub(super) fn revocation_changed(reply: &Value) -> bool {
    match reply {
        Value::Integer(n) => *n != 0,
        _ => true,
    }
}

/// `sync.lua`'s answer: the epoch, and the revoked token ids and subject
/// cut-offs when the caller's epoch was not current.
pub(super) fn parse_sync(reply: Value) -> Result<(i64, Option<Revoked>), StoreError> {
    let mut a = reply_array(reply, "sync")?.into_iter();
    let epoch = a
        .next()
        .and_then(|v| v.as_i64())
        .ok_or_else(|| StoreError::Protocol("sync reply without epoch".into()))?;
    let sets = (a.len() == 2).then(|| {
        let jti = pairs(a.next());
        let sub = pairs(a.next());
        (jti, sub)
    });
    Ok((epoch, sets))
}

/// Revoked token ids (to their last accepted second) and subjects (to their
/// cut-off `iat`).
type Revoked = (Vec<(String, u64)>, Vec<(String, u64)>);

/// The `/admin/usage` fields of a day's hash, in the order [`parse_usage`]
/// reads them.
pub(super) const USAGE_FIELDS: [&str; 6] = [
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
];

/// `HMGET` of [`USAGE_FIELDS`]; a missing hash or field reads as 0.
pub(super) fn parse_usage(v: &[Value]) -> DayTotals {
    let int = |i: usize| v.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
    DayTotals {
        requests: int(0),
        input_tokens: int(1),
        output_tokens: int(2),
        cache_creation_input_tokens: int(3),
        cache_read_input_tokens: int(4),
        cost_usd: v.get(5).and_then(|v| v.as_f64()).unwrap_or(0.0),
    }
}

fn bad_reply(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("unexpected {what} reply: {v:?}"))
}

pub(super) fn reply_array(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(bad_reply(what, &other)),
    }
}

pub(super) fn int_at(a: &[Value], i: usize, what: &str) -> Result<i64, StoreError> {
    a.get(i)
        .and_then(|v| v.as_i64())
        .ok_or_else(|| StoreError::Protocol(format!("unexpected {what} reply: {a:?}")))
}

/// A score: Redis prints them as decimal strings, possibly `1.8e+19`.
fn score(v: &Value) -> Option<u64> {
    v.as_f64()
        .filter(|f| !f.is_nan())
        .map(|f| f.max(0.0) as u64)
}

fn pairs(v: Option<Value>) -> Vec<(String, u64)> {
    let Some(Value::Array(flat)) = v else {
        return Vec::new();
    };
    flat.chunks_exact(2)
        .filter_map(|p| Some((p[0].as_str()?.into_owned(), score(&p[1])?)))
        .collect()
}

/// `admit_reserve_pair.lua`'s answer for `user` and `team` at `now_ms`.
pub(super) fn parse_pair(
    reply: Value,
    now_ms: u64,
    user: &Scope<'_>,
    team: &Scope<'_>,
) -> Result<PairGrant, StoreError> {
    let mut a = reply_array(reply, "admit_reserve_pair")?.into_iter();
    let code = match a.next() {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| bad_reply("admit_reserve_pair", &v))?,
        None => {
            return Err(StoreError::Protocol(
                "empty admit_reserve_pair reply".into(),
            ))
        }
    };
    let mut next = || a.next().unwrap_or(Value::Null);
    let refused = |side, admission| match admission {
        Admission::Refused(refusal) => Ok(PairGrant::Refused { side, refusal }),
        Admission::Admitted { .. } => Err(StoreError::Protocol(
            "admit_reserve_pair: refusal without a refused admission".into(),
        )),
    };
    match code {
        1 => return refused(Side::User, parse_admit(next(), now_ms, user.admit)?),
        2 => return refused(Side::Team, parse_admit(next(), now_ms, team.admit)?),
        _ => {}
    }
    let (user_slot, remaining_requests) = match parse_admit(next(), now_ms, user.admit)? {
        Admission::Admitted {
            slot_held,
            remaining_requests,
        } => (slot_held, remaining_requests),
        Admission::Refused(_) => {
            return Err(StoreError::Protocol(
                "admit_reserve_pair: admitted without the caller's admission".into(),
            ))
        }
    };
    let team_slot = matches!(
        parse_admit(next(), now_ms, team.admit)?,
        Admission::Admitted {
            slot_held: true,
            ..
        }
    );
    let reserved_in = |v: Value, s: &Scope<'_>| -> Result<Option<Reserved>, StoreError> {
        match (v, s.budget) {
            (v @ Value::Array(_), Some(b)) => {
                parse_reserve(v, now_ms, b.tokens, b.usd, b.limits).map(Some)
            }
            _ => Ok(None),
        }
    };
    let reserved = match code {
        3 | 4 => {
            let (side, scope) = if code == 3 {
                (Side::User, user)
            } else {
                (Side::Team, team)
            };
            match reserved_in(next(), scope)? {
                Some(Reserved::Refused(refusal)) => PairReserved::Refused { side, refusal },
                _ => {
                    return Err(StoreError::Protocol(
                        "admit_reserve_pair: budget refusal without a refused reservation".into(),
                    ))
                }
            }
        }
        0 if user.budget.is_none() && team.budget.is_none() => PairReserved::Nothing,
        0 => {
            let held = |r: Option<Reserved>| match r {
                Some(Reserved::Reserved {
                    reservation,
                    remaining_tokens_minute,
                }) => Ok(Some((reservation, remaining_tokens_minute))),
                None => Ok(None),
                Some(Reserved::Refused(_)) => Err(StoreError::Protocol(
                    "admit_reserve_pair: granted with a refused reservation".into(),
                )),
            };
            let u = held(reserved_in(next(), user)?)?;
            let t = held(reserved_in(next(), team)?)?;
            if u.is_some() != user.budget.is_some() || t.is_some() != team.budget.is_some() {
                return Err(StoreError::Protocol(
                    "admit_reserve_pair: reservation missing or unexpected".into(),
                ));
            }
            PairReserved::Reserved {
                user: u.map(|(r, _)| r),
                team: t.map(|(r, _)| r),
                remaining_tokens_minute: u.and_then(|(_, left)| left),
            }
        }
        _ => {
            return Err(StoreError::Protocol(format!(
                "unexpected admit_reserve_pair reply code {code}"
            )))
        }
    };
    Ok(PairGrant::Admitted {
        user_slot,
        team_slot,
        remaining_requests,
        reserved,
    })
}
