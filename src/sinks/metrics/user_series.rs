//! The per-user counters (`tollgate_requests_total`, `tollgate_tokens_total`
//! and `tollgate_cost_usd_total` with a `user` label; the last two also
//! have `team`) as one compact
//! collector, instead of the `prometheus` crate's label vectors.
//!
//! Why not `IntCounterVec`: each of its label sets holds its own label
//! strings, descriptor references and a protobuf-shaped value, about 6 KB
//! for the six series one user produces, and a vector never forgets a label
//! set. 100,000 users would keep ~600 MB for the life of the process. Here a
//! user costs one map entry with one row per (provider, model, status), and
//! users idle longer than `metrics.per_user_idle_expiry` are dropped by the
//! housekeeping sweep. A dropped series that comes back starts again from 0,
//! which Prometheus reads as a counter reset (`rate`/`increase` stay right).

use crate::fast_map::FastMap;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
use std::collections::HashMap;
use std::sync::Arc;

use super::TokenCounts;

pub(super) struct UserSeries {
    users: FastMap<Box<str>, User>,
    /// One copy of each provider, model and team label value, shared by
    /// every user's rows: the values come from the config (model labels are
    /// limited to its names), so 100,000 users need a few dozen strings, not
    /// 200,000 allocations (~48 bytes a user). Taken only when a row is
    /// created, never for a known user's request.
    labels: Mutex<foldhash::HashSet<Arc<str>>>,
    descs: [Desc; 3],
}

/// Label values beyond this many are not shared (each row keeps its own),
/// so the set stays bounded whatever reaches it.
const SHARED_LABELS: usize = 4096;

struct User {
    last_ms: u64,
    /// Nearly always one row: a user, one provider, one model, status 200.
    rows: Vec<Row>,
}

struct Row {
    provider: Arc<str>,
    model: Arc<str>,
    /// The caller's team ("" when none): a label of tokens and cost only.
    team: Arc<str>,
    status: u16,
    requests: u64,
    /// Whether a proxied request landed here: only those have token and
    /// cost series (a refused request has no usage to report).
    billed: bool,
    tokens: [u64; 4],
    cost: f64,
}

/// `kind` label values of `tollgate_tokens_total`, in `Row::tokens` order.
const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_creation"];

pub(super) struct Help {
    pub requests: &'static str,
    pub tokens: &'static str,
    pub cost: &'static str,
}

impl UserSeries {
    pub(super) fn new(help: Help) -> prometheus::Result<Self> {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                HashMap::new(),
            )
        };
        Ok(Self {
            users: FastMap::default(),
            labels: Mutex::new(foldhash::HashSet::default()),
            descs: [
                desc(
                    "tollgate_requests_total",
                    help.requests,
                    &["provider", "model", "status", "user"],
                )?,
                desc(
                    "tollgate_tokens_total",
                    help.tokens,
                    &["provider", "model", "kind", "team", "user"],
                )?,
                desc(
                    "tollgate_cost_usd_total",
                    help.cost,
                    &["provider", "model", "team", "user"],
                )?,
            ],
        })
    }

    /// Counts one request; `usage` is `None` for a refused one.
    // One call per request: a struct would only move the same values.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        user: &str,
        team: &str,
        provider: &str,
        model: &str,
        status: u16,
        usage: Option<(TokenCounts, f64)>,
        now_ms: u64,
    ) {
        // The common case (a known user) takes a shard lock and allocates
        // nothing; a first-seen user or row allocates its labels once.
        let mut entry = match self.users.get_mut(user) {
            Some(e) => e,
            None => self.users.entry(user.into()).or_insert_with(|| User {
                last_ms: now_ms,
                rows: Vec::with_capacity(1),
            }),
        };
        let u = entry.value_mut();
        u.last_ms = u.last_ms.max(now_ms);
        let at = u.rows.iter().position(|r| {
            r.status == status && *r.provider == *provider && *r.model == *model && *r.team == *team
        });
        let row = match at {
            Some(i) => &mut u.rows[i],
            None => {
                let [provider, model, team] = self.shared([provider, model, team]);
                u.rows.push(Row {
                    provider,
                    model,
                    team,
                    status,
                    requests: 0,
                    billed: false,
                    tokens: [0; 4],
                    cost: 0.0,
                });
                let last = u.rows.len() - 1;
                &mut u.rows[last]
            }
        };
        row.requests = row.requests.saturating_add(1);
        if let Some((t, cost)) = usage {
            row.billed = true;
            for (slot, n) in
                row.tokens
                    .iter_mut()
                    .zip([t.input, t.output, t.cache_read, t.cache_creation])
            {
                *slot = slot.saturating_add(n);
            }
            row.cost += cost;
        }
    }

    /// The shared copies of a row's label values, under one lock.
    fn shared<const N: usize>(&self, values: [&str; N]) -> [Arc<str>; N] {
        let mut set = self.labels.lock();
        values.map(|value| label(&mut set, value))
    }

    /// Forgets users not seen for `idle_ms`; returns how many were dropped.
    pub(super) fn sweep(&self, now_ms: u64, idle_ms: u64) -> usize {
        let before = self.users.len();
        self.users
            .retain(|_, u| now_ms.saturating_sub(u.last_ms) < idle_ms);
        let dropped = before.saturating_sub(self.users.len());
        // A burst of users leaves a large table behind; give it back once
        // most of it is empty.
        if dropped > 0 && self.users.len() < self.users.capacity() / 4 {
            self.users.shrink_to_fit();
        }
        dropped
    }

    pub(super) fn users(&self) -> usize {
        self.users.len()
    }
}

/// The shared copy of a label value (a new one past [`SHARED_LABELS`]).
fn label(set: &mut foldhash::HashSet<Arc<str>>, value: &str) -> Arc<str> {
    if let Some(v) = set.get(value) {
        return v.clone();
    }
    let v: Arc<str> = value.into();
    if set.len() < SHARED_LABELS {
        set.insert(v.clone());
    }
    v
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn family(desc: &Desc, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(MetricType::COUNTER);
    f.set_metric(metrics);
    f
}

impl Collector for UserSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut requests = Vec::new();
        let mut tokens = Vec::new();
        let mut cost = Vec::new();
        for e in self.users.iter() {
            let user = e.key().as_ref();
            let rows = &e.value().rows;
            for (i, r) in rows.iter().enumerate() {
                // Requests have no team label: the first row of a (provider,
                // model, status) speaks for all of them.
                let same_status = |o: &Row| {
                    o.status == r.status && o.provider == r.provider && o.model == r.model
                };
                if !rows[..i].iter().any(same_status) {
                    let n: u64 = rows[i..]
                        .iter()
                        .filter(|o| same_status(o))
                        .fold(0, |n, o| n.saturating_add(o.requests));
                    // Label pairs sorted by name, as the text encoder expects.
                    requests.push(counter(
                        vec![
                            pair("model", &r.model),
                            pair("provider", &r.provider),
                            pair("status", &r.status.to_string()),
                            pair("user", user),
                        ],
                        n as f64,
                    ));
                }
                // Tokens and cost have no status label: the first billed row
                // of a (provider, model, team) speaks for all of them.
                let same = |o: &Row| {
                    o.billed && o.provider == r.provider && o.model == r.model && o.team == r.team
                };
                if !r.billed || rows[..i].iter().any(same) {
                    continue;
                }
                let mut sum = [0u64; 4];
                let mut usd = 0.0;
                for o in rows[i..].iter().filter(|o| same(o)) {
                    for (s, n) in sum.iter_mut().zip(o.tokens) {
                        *s = s.saturating_add(n);
                    }
                    usd += o.cost;
                }
                for (kind, n) in TOKEN_KINDS.iter().zip(sum) {
                    tokens.push(counter(
                        vec![
                            pair("kind", kind),
                            pair("model", &r.model),
                            pair("provider", &r.provider),
                            pair("team", &r.team),
                            pair("user", user),
                        ],
                        n as f64,
                    ));
                }
                cost.push(counter(
                    vec![
                        pair("model", &r.model),
                        pair("provider", &r.provider),
                        pair("team", &r.team),
                        pair("user", user),
                    ],
                    usd,
                ));
            }
        }
        let [d_req, d_tok, d_cost] = &self.descs;
        let mut out = Vec::with_capacity(3);
        // An empty family would print a HELP line with no samples.
        for (d, m) in [(d_req, requests), (d_tok, tokens), (d_cost, cost)] {
            if !m.is_empty() {
                out.push(family(d, m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> UserSeries {
        UserSeries::new(Help {
            requests: "r",
            tokens: "t",
            cost: "c",
        })
        .expect("descs")
    }

    fn row_labels(s: &UserSeries, user: &str) -> (Arc<str>, Arc<str>, Arc<str>) {
        let u = s.users.get(user).expect("user");
        let r = &u.rows[0];
        (r.provider.clone(), r.model.clone(), r.team.clone())
    }

    #[test]
    fn users_share_one_copy_of_each_label_value() {
        let s = series();
        s.record("alice", "red", "anthropic", "claude-x", 200, None, 1);
        s.record("bob", "red", "anthropic", "claude-x", 200, None, 1);
        let (a, b) = (row_labels(&s, "alice"), row_labels(&s, "bob"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(Arc::ptr_eq(&a.1, &b.1));
        assert!(Arc::ptr_eq(&a.2, &b.2));
        assert_eq!((&*a.0, &*a.1, &*a.2), ("anthropic", "claude-x", "red"));
    }

    #[test]
    fn label_values_past_the_bound_are_not_kept() {
        let s = series();
        for i in 0..SHARED_LABELS + 10 {
            s.shared([format!("v{i}").as_str()]);
        }
        assert_eq!(s.labels.lock().len(), SHARED_LABELS);
        // Still a correct value, only not shared.
        let [beyond] = s.shared(["beyond"]);
        assert_eq!(&*beyond, "beyond");
        assert_eq!(s.labels.lock().len(), SHARED_LABELS);
    }
}
