//! Group commit of the per-request scripts.
//!
//! Every admitted request makes two script calls (admission, finish). Sent
//! one by one, each costs a trip through fred to the IO thread and back and
//! an `EVALSHA` in redis-server, and under load those fixed costs dominate
//! the scripts' own work. So the per-request calls go through one queue on
//! the IO thread: while a call is on the wire, the calls that arrive queue up,
//! and the next send carries all of them (up to [`MAX_BATCH`]) in one
//! `batch.lua` that runs each script in order and returns each answer. At low
//! load nothing queues and a call goes out alone, as its own script, with no
//! added wait; under load the batch grows with the load.
//!
//! Answers stay exact: each call gets what its own script returned, and the
//! calls run in the order they were queued, so a request the same client
//! sends next through this replica runs after the previous one's release.
//! A script that fails inside a batch fails alone (`pcall`); a batch that
//! cannot be sent, or gets no answer, fails every call in it, each reported
//! as it would have been alone. Only for a single Redis (not a cluster): a
//! script can only touch keys of one cluster slot.
//!
//! Waiting is bounded per call, not per batch: a call gets its answer or
//! fails within the command timeout of when it was queued, even while the
//! batch ahead of it hangs on a stalled Redis; a call whose time ran out
//! before its turn is not sent at all.

use super::scripts::Scripts;
use fred::prelude::{Client, ClientLike, Error as FredError, ErrorKind, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Calls carried by one `batch.lua`: bounds the script's run time (other
/// clients wait while it runs) and the size of one command.
pub(super) const MAX_BATCH: usize = 128;

/// The scripts that can share a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Admit,
    Reserve,
    AdmitReserve,
    AdmitReservePair,
    Finish,
    /// A replica's lease of a subject's allowance (`store.lease`).
    Lease,
    /// The unused part of an ended lease, given back.
    LeaseReturn,
}

impl Op {
    /// The name `batch.lua` dispatches on.
    fn code(self) -> &'static str {
        match self {
            Op::Admit => "a",
            Op::Reserve => "r",
            Op::AdmitReserve => "ar",
            Op::AdmitReservePair => "arp",
            Op::Finish => "f",
            Op::Lease => "l",
            Op::LeaseReturn => "lr",
        }
    }
}

/// Why a call got no answer from its script.
#[derive(Debug)]
pub(super) enum CallError {
    /// The connection was down when its turn came: it was never sent.
    NotSent,
    /// The command (alone or the batch) failed or went unanswered.
    Redis(FredError),
    /// Its script raised an error inside a batch (the others ran).
    Script(String),
}

struct Call {
    op: Op,
    /// Its caller stops waiting then; not sent after it.
    deadline: Instant,
    keys: Vec<String>,
    args: Vec<String>,
    reply: oneshot::Sender<Result<Value, CallError>>,
}

/// The queue's sending side; cheap to clone.
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Call>,
    timeout: Duration,
    /// Calls that went out in a batch of two or more.
    batched: Arc<AtomicU64>,
}

impl Batcher {
    /// Starts the queue's task on `rt` (the store's IO thread). A call
    /// waits at most `timeout` from when it is queued.
    pub(super) fn start(
        client: Client,
        scripts: Scripts,
        rt: &tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let batched = Arc::new(AtomicU64::new(0));
        rt.spawn(run(client, scripts, rx, batched.clone()));
        Self {
            tx,
            timeout,
            batched,
        }
    }

    /// Calls sent in a batch of two or more since start.
    pub(super) fn batched_calls(&self) -> u64 {
        self.batched.load(Ordering::Relaxed)
    }

    /// Queues the call and waits for its answer. The call is queued when
    /// this future is first polled, so calls keep the order of their first
    /// polls. Must be polled within a tokio runtime with timers.
    pub(super) async fn call(
        &self,
        op: Op,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, CallError> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.timeout;
        let call = Call {
            op,
            deadline,
            keys,
            args,
            reply,
        };
        if self.tx.send(call).is_err() {
            // The IO thread is gone (process exiting).
            return Err(CallError::NotSent);
        }
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(r)) => r,
            // Dropped unsent: its time ran out first, or the IO thread ended.
            Ok(Err(_)) => Err(CallError::NotSent),
            // Perhaps sent: it may have run.
            Err(_) => Err(CallError::Redis(FredError::new(
                ErrorKind::Timeout,
                "no answer from redis within the command timeout",
            ))),
        }
    }
}

async fn run(
    client: Client,
    scripts: Scripts,
    mut rx: mpsc::UnboundedReceiver<Call>,
    batched: Arc<AtomicU64>,
) {
    let mut calls = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut calls, MAX_BATCH).await > 0 {
        let now = Instant::now();
        calls.retain(|c| c.deadline > now && !c.reply.is_closed());
        if calls.is_empty() {
            continue;
        }
        if !client.is_connected() {
            for c in calls.drain(..) {
                let _ = c.reply.send(Err(CallError::NotSent));
            }
            continue;
        }
        if calls.len() == 1 {
            if let Some(c) = calls.pop() {
                let r = scripts.call_one(&client, c.op, c.keys, c.args).await;
                let _ = c.reply.send(r);
            }
            continue;
        }
        batched.fetch_add(calls.len() as u64, Ordering::Relaxed);
        let (keys, args) = batch_command(&mut calls);
        let r = scripts
            .batch
            .evalsha_with_reload::<Value, _, _>(&client, keys, args)
            .await;
        answer(calls.drain(..), r);
    }
}

/// `batch.lua`'s keys and arguments: the call count, then each call's
/// script, key count and argument count, then every call's arguments in
/// order; the keys are every call's keys in order.
fn batch_command(calls: &mut [Call]) -> (Vec<String>, Vec<String>) {
    let nkeys = calls.iter().map(|c| c.keys.len()).sum();
    let nargs: usize = calls.iter().map(|c| c.args.len()).sum();
    let mut keys = Vec::with_capacity(nkeys);
    let mut args = Vec::with_capacity(1 + 3 * calls.len() + nargs);
    args.push(calls.len().to_string());
    for c in calls.iter() {
        args.push(c.op.code().to_string());
        args.push(c.keys.len().to_string());
        args.push(c.args.len().to_string());
    }
    for c in calls.iter_mut() {
        keys.append(&mut c.keys);
        args.append(&mut c.args);
    }
    (keys, args)
}

/// Hands each call its part of `batch.lua`'s answer: `{1, reply}` for a
/// script that ran, `{0, message}` for one that raised an error.
fn answer(calls: impl ExactSizeIterator<Item = Call>, reply: Result<Value, FredError>) {
    let n = calls.len();
    let items = match reply {
        Ok(Value::Array(items)) if items.len() == n => items,
        Ok(other) => {
            let msg = format!("batch of {n}: unexpected reply {other:?}");
            for c in calls {
                let _ = c.reply.send(Err(CallError::Script(msg.clone())));
            }
            return;
        }
        Err(e) => {
            for c in calls {
                let _ = c.reply.send(Err(CallError::Redis(e.clone())));
            }
            return;
        }
    };
    for (c, item) in calls.zip(items) {
        let _ = c.reply.send(split_item(item));
    }
}

fn split_item(item: Value) -> Result<Value, CallError> {
    let Value::Array(mut parts) = item else {
        return Err(CallError::Script(format!("unexpected batch item {item:?}")));
    };
    if parts.len() != 2 {
        return Err(CallError::Script(format!(
            "unexpected batch item {parts:?}"
        )));
    }
    let value = parts.pop().unwrap_or(Value::Null);
    match parts.pop().and_then(|v| v.as_i64()) {
        Some(1) => Ok(value),
        _ => Err(CallError::Script(
            value.as_string().unwrap_or_else(|| format!("{value:?}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        op: Op,
        keys: &[&str],
        args: &[&str],
    ) -> (Call, oneshot::Receiver<Result<Value, CallError>>) {
        let (reply, rx) = oneshot::channel();
        let c = Call {
            op,
            deadline: Instant::now() + Duration::from_secs(60),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            reply,
        };
        (c, rx)
    }

    #[test]
    fn batch_command_lays_out_headers_then_arguments() {
        let (a, _ra) = call(Op::AdmitReserve, &["k1", "k2"], &["x", "y", "z"]);
        let (b, _rb) = call(Op::Finish, &["k3"], &["w"]);
        let mut calls = vec![a, b];
        let (keys, args) = batch_command(&mut calls);
        assert_eq!(keys, ["k1", "k2", "k3"]);
        assert_eq!(
            args,
            ["2", "ar", "2", "3", "f", "1", "1", "x", "y", "z", "w"]
        );
    }

    #[test]
    fn each_call_gets_its_own_answer_or_error() {
        let (a, mut ra) = call(Op::Admit, &[], &[]);
        let (b, mut rb) = call(Op::Finish, &[], &[]);
        let items = Value::Array(vec![
            Value::Array(vec![Value::Integer(1), Value::Integer(7)]),
            Value::Array(vec![Value::Integer(0), Value::String("WRONGTYPE x".into())]),
        ]);
        answer(vec![a, b].into_iter(), Ok(items));
        assert_eq!(ra.try_recv().unwrap().unwrap(), Value::Integer(7));
        match rb.try_recv().unwrap() {
            Err(CallError::Script(m)) => assert_eq!(m, "WRONGTYPE x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_of_the_wrong_shape_fails_every_call() {
        let (a, mut ra) = call(Op::Admit, &[], &[]);
        let (b, mut rb) = call(Op::Finish, &[], &[]);
        answer(vec![a, b].into_iter(), Ok(Value::Integer(1)));
        assert!(matches!(ra.try_recv().unwrap(), Err(CallError::Script(_))));
        assert!(matches!(rb.try_recv().unwrap(), Err(CallError::Script(_))));
    }
}
