//! The Lua scripts, and the keys and arguments each call passes them.

use super::batch::{CallError, Op};
use super::finishes::QueuedFinish;
use super::keys::*;
use crate::store::window::*;
use crate::store::{AdmitLimits, BudgetLimits, Scope};
use fred::prelude::{Client, Value};
use fred::types::scripts::Script;

/// Lua numbers are doubles: integers above 2^53 would round.
const MAX_LUA_INT: u64 = 1 << 53;
const BUDGET_LUA: &str = include_str!("lua/budget.lua");
/// The sliding log's count, shared by every script admitting a request.
const LOG_LUA: &str = include_str!("lua/log.lua");

#[derive(Clone)]
pub(super) struct Scripts {
    admit: Script,
    reserve: Script,
    admit_reserve: Script,
    admit_reserve_pair: Script,
    finish: Script,
    lease: Script,
    lease_return: Script,
    /// The four above in one, called with several calls at once.
    pub(super) batch: Script,
    pub(super) counter: Script,
    pub(super) revoke: Script,
    pub(super) sync: Script,
}

/// `body` (a script reading `KEYS` and `ARGV`) as a local function.
fn lua_function(name: &str, body: &str) -> String {
    format!("local function {name}(KEYS, ARGV)\n{body}\nend\n")
}

impl Scripts {
    pub(super) fn new() -> Self {
        let admit = include_str!("lua/admit.lua");
        let reserve = include_str!("lua/reserve.lua");
        let admit_reserve = include_str!("lua/admit_reserve.lua");
        let pair = include_str!("lua/admit_reserve_pair.lua");
        let finish = include_str!("lua/finish.lua");
        let lease = include_str!("lua/lease.lua");
        let lease_return = include_str!("lua/lease_return.lua");
        let admit_and_reserve = format!(
            "{LOG_LUA}\n{BUDGET_LUA}\n{}{}",
            lua_function("admit", admit),
            lua_function("reserve", reserve)
        );
        Self {
            admit: Script::from_lua(format!("{LOG_LUA}\n{admit}")),
            reserve: Script::from_lua(format!("{BUDGET_LUA}\n{reserve}")),
            admit_reserve: Script::from_lua(format!("{admit_and_reserve}{admit_reserve}")),
            admit_reserve_pair: Script::from_lua(format!("{admit_and_reserve}{pair}")),
            finish: Script::from_lua(format!("{BUDGET_LUA}\n{finish}")),
            lease: Script::from_lua(format!(
                "{LOG_LUA}\n{BUDGET_LUA}\n{}{lease}",
                lua_function("lease_return", lease_return)
            )),
            lease_return: Script::from_lua(format!("{LOG_LUA}\n{BUDGET_LUA}\n{lease_return}")),
            batch: Script::from_lua(format!(
                "{admit_and_reserve}{}{}{}{}{}{}",
                lua_function("admit_reserve", admit_reserve),
                lua_function("admit_reserve_pair", pair),
                lua_function("finish", finish),
                lua_function("lease_return", lease_return),
                lua_function("lease", lease),
                include_str!("lua/batch.lua")
            )),
            counter: Script::from_lua(include_str!("lua/counter.lua")),
            revoke: Script::from_lua(include_str!("lua/revoke.lua")),
            sync: Script::from_lua(include_str!("lua/sync.lua")),
        }
    }

    /// One per-request script call on its own (no batch).
    pub(super) async fn call_one(
        &self,
        client: &Client,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CallError> {
        let script = match op {
            Op::Admit => &self.admit,
            Op::Reserve => &self.reserve,
            Op::AdmitReserve => &self.admit_reserve,
            Op::AdmitReservePair => &self.admit_reserve_pair,
            Op::Finish => &self.finish,
            Op::Lease => &self.lease,
            Op::LeaseReturn => &self.lease_return,
        };
        script
            .evalsha_with_reload::<Value, _, _>(client, keys, args)
            .await
            .map_err(CallError::Redis)
    }
}

/// Keys and arguments of `admit.lua`.
pub(super) fn admit_call(
    keys: &Keys,
    sub: &str,
    now_ms: u64,
    limits: AdmitLimits,
) -> (Vec<String>, Vec<String>) {
    let k = keys.subject(sub);
    let window_start = now_ms as i128 - MINUTE_MS as i128;
    let member = format!("{now_ms}-{:016x}", rand::random::<u64>());
    (
        vec![k.req(), k.conc(), k.req_weights()],
        vec![
            now_ms.to_string(),
            window_start.to_string(),
            limit_arg(limits.requests_per_minute),
            limit_arg(limits.max_concurrent),
            member,
            LOG_TTL_MS.to_string(),
            SLOT_TTL_MS.to_string(),
        ],
    )
}

/// Keys and arguments of `reserve.lua`; on a cluster the in-flight counter
/// (another slot) is left out.
pub(super) fn reserve_call(
    keys: &Keys,
    clustered: bool,
    sub: &str,
    now_ms: u64,
    tokens: u64,
    usd: f64,
    limits: BudgetLimits,
) -> (Vec<String>, Vec<String>) {
    let k = keys.subject(sub);
    let mut keys_v = vec![k.bud()];
    if !clustered {
        keys_v.push(keys.inflight());
    }
    (
        keys_v,
        vec![
            (now_ms / MINUTE_MS).to_string(),
            (now_ms / DAY_MS).to_string(),
            (now_ms % MINUTE_MS).to_string(),
            lua_int(tokens).to_string(),
            lua_f64(usd),
            limit_arg(limits.tokens_per_minute),
            limit_arg(limits.tokens_per_day),
            limits.usd_per_day.map(lua_f64).unwrap_or_default(),
            BUDGET_TTL_MS.to_string(),
            INFLIGHT_TTL_MS.to_string(),
        ],
    )
}

/// Keys and arguments of `admit_reserve_pair.lua` (standalone Redis only).
pub(super) fn pair_call(
    keys: &Keys,
    user: &Scope<'_>,
    team: &Scope<'_>,
    now_ms: u64,
) -> (Vec<String>, Vec<String>) {
    let (mut k, mut a) = admit_call(keys, user.subject, now_ms, user.admit);
    let (tk, ta) = admit_call(keys, team.subject, now_ms, team.admit);
    k.extend(tk);
    a.extend(ta);
    k.push(keys.subject(user.subject).bud());
    k.push(keys.subject(team.subject).bud());
    k.push(keys.inflight());
    let flag = |s: &Scope<'_>| if s.budget.is_some() { "1" } else { "0" }.to_string();
    a.push(flag(user));
    a.push(flag(team));
    for s in [user, team] {
        match s.budget {
            Some(b) => {
                let (_, ra) =
                    reserve_call(keys, false, s.subject, now_ms, b.tokens, b.usd, b.limits);
                a.extend(ra);
            }
            // Unread: the flag above says this scope reserves nothing.
            None => a.extend(std::iter::repeat_n(String::from("0"), RESERVE_ARGS)),
        }
    }
    (k, a)
}

/// The number of arguments `reserve.lua` takes.
const RESERVE_ARGS: usize = 10;

impl QueuedFinish {
    /// The finish script's keys and arguments, settling against the
    /// current time.
    pub(super) fn call(&self, keys: &Keys, clustered: bool) -> (Vec<String>, Vec<String>) {
        let k = keys.subject(&self.sub);
        let now_ms = crate::clock::now_ms();
        let mut keys_v = vec![
            k.bud(),
            k.conc(),
            k.usage(self.totals.as_ref().map_or("", |(day, _)| day)),
            k.marker(self.marker),
        ];
        if !clustered {
            keys_v.push(keys.inflight());
        }
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut args = vec![
            self.marker_ttl_ms.to_string(),
            flag(self.slot_held),
            SLOT_TTL_MS.to_string(),
        ];
        match self.reservation {
            Some(r) => {
                let now = r.at_ms.max(now_ms);
                let diff = lua_int(self.actual_tokens) as i64 - lua_int(r.tokens) as i64;
                args.extend([
                    if r.held { "1" } else { "2" }.into(),
                    (now / MINUTE_MS).to_string(),
                    (now / DAY_MS).to_string(),
                    (r.at_ms / MINUTE_MS).to_string(),
                    (r.at_ms / DAY_MS).to_string(),
                    diff.to_string(),
                    lua_f64(self.actual_usd - r.usd),
                ]);
            }
            None => args.extend(["0", "0", "0", "0", "0", "0", "0"].map(String::from)),
        }
        args.extend([BUDGET_TTL_MS.to_string(), INFLIGHT_TTL_MS.to_string()]);
        match &self.totals {
            Some((day, t)) => {
                let expire_at = match crate::clock::day_index(day) {
                    Some(d) => (d + USAGE_RETENTION_DAYS + 1) * DAY_MS,
                    None => now_ms + (USAGE_RETENTION_DAYS + 1) * DAY_MS,
                };
                let int = |v: u64| v.min(i64::MAX as u64).to_string();
                args.extend([
                    "1".into(),
                    int(t.requests),
                    int(t.input_tokens),
                    int(t.output_tokens),
                    int(t.cache_creation_input_tokens),
                    int(t.cache_read_input_tokens),
                    lua_f64(t.cost_usd),
                    expire_at.to_string(),
                ]);
            }
            None => args.extend(["0", "0", "0", "0", "0", "0", "0", "0"].map(String::from)),
        }
        (keys_v, args)
    }
}

/// Arguments of `revoke.lua` for a token id, accepted until the Unix second
/// `until` (expired ids are pruned as of `now_s`).
pub(super) fn revoke_jti_call(
    keys: &Keys,
    jti: &str,
    until: u64,
    now_s: u64,
) -> (Vec<String>, Vec<String>) {
    (
        vec![keys.revoked_jti(), keys.revocation_epoch()],
        vec![
            jti.to_string(),
            until.to_string(),
            now_s.to_string(),
            REVOCATION_KEY_TTL_S.to_string(),
            keys.channel(),
            format!("j {until} {jti}"),
        ],
    )
}

/// Arguments of `revoke.lua` for every token of `sub` issued at or before
/// `at_secs` (subject cut-offs are never pruned).
pub(super) fn revoke_sub_call(keys: &Keys, sub: &str, at_secs: u64) -> (Vec<String>, Vec<String>) {
    (
        vec![keys.revoked_sub(), keys.revocation_epoch()],
        vec![
            sub.to_string(),
            at_secs.to_string(),
            String::new(),
            REVOCATION_KEY_TTL_S.to_string(),
            keys.channel(),
            format!("s {at_secs} {sub}"),
        ],
    )
}

/// Keys and arguments of `sync.lua`: `known` is the epoch held, empty to
/// ask for everything.
pub(super) fn sync_call(keys: &Keys, known: String, now_s: u64) -> (Vec<String>, Vec<String>) {
    (
        vec![
            keys.revoked_jti(),
            keys.revoked_sub(),
            keys.revocation_epoch(),
        ],
        vec![known, now_s.to_string()],
    )
}

/// Arguments of `counter.lua` (the cluster's in-flight counter).
pub(super) fn counter_call(keys: &Keys, delta: i64) -> (Vec<String>, Vec<String>) {
    (
        vec![keys.inflight()],
        vec![delta.to_string(), INFLIGHT_TTL_MS.to_string()],
    )
}

pub(super) fn lua_int(v: u64) -> u64 {
    v.min(MAX_LUA_INT)
}

/// Rust prints the shortest string that parses back to the same f64, which
/// Lua's `tonumber` reads exactly; non-finite values would poison the sums.
pub(super) fn lua_f64(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        "0".into()
    }
}

pub(super) fn limit_arg(v: Option<u64>) -> String {
    v.map_or_else(|| "-1".into(), |v| lua_int(v).to_string())
}
