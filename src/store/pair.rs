//! A request charged to two scopes at once: its caller and the caller's
//! team. Each scope is an ordinary store subject (a team's is
//! [`team_subject`]), so every window, slot, budget and day total works the
//! same for both; what this adds is taking both in one step, so that
//! members' concurrent requests never overspend their team.

use super::*;

/// The store subject holding a team's limits state and day totals. Claims
/// with control characters are refused (`identity::claims`), so no caller's
/// `sub` can ever name it.
pub fn team_subject(team: &str) -> String {
    format!("\u{1}team\u{1}{team}")
}

/// One scope of a [`Store::admit_reserve_pair`] call.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub subject: &'a str,
    pub admit: AdmitLimits,
    pub budget: Option<BudgetAsk>,
}

/// Which scope a refusal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    User,
    Team,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairGrant {
    /// Refused by `side`'s request-count limits: nothing is held in either
    /// scope.
    Refused { side: Side, refusal: Refusal },
    /// Both scopes admitted the request; the caller gives back each slot
    /// held exactly once.
    Admitted {
        user_slot: bool,
        team_slot: bool,
        /// The caller's own requests left this minute.
        remaining_requests: Option<u64>,
        reserved: PairReserved,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairReserved {
    /// Neither scope asked for a reservation.
    Nothing,
    /// Reserved in each scope that asked.
    Reserved {
        user: Option<Reservation>,
        team: Option<Reservation>,
        /// The caller's own tokens left this minute.
        remaining_tokens_minute: Option<u64>,
    },
    /// A budget of `side` refused: nothing is reserved in either scope (the
    /// admission stands, as for a single scope).
    Refused { side: Side, refusal: Refusal },
}

/// [`Store::admit_reserve_pair`] from single-scope calls, for a store that
/// cannot take both scopes in one step (the in-process store, Redis
/// Cluster where the two scopes live in different slots). Each step is
/// atomic in its scope and the caller's scope is always taken first; a
/// refusal by the team gives back what the caller's scope took
/// ([`Store::unadmit`], a reservation settled to nothing), so a team is
/// never overspent. Between the two steps another request of the same
/// caller may see the first step's hold and be refused: never admitted
/// wrongly.
pub async fn admit_reserve_stepwise<S: Store + ?Sized>(
    store: &S,
    user: Scope<'_>,
    team: Scope<'_>,
    now_ms: u64,
) -> Result<PairGrant, StoreError> {
    let ua = store.admit(user.subject, now_ms, user.admit).await?;
    let (remaining_requests, user_slot) = match ua {
        Admission::Refused(refusal) => {
            return Ok(PairGrant::Refused {
                side: Side::User,
                refusal,
            })
        }
        Admission::Admitted {
            remaining_requests,
            slot_held,
        } => (remaining_requests, slot_held),
    };
    let give_back_user_slot = || async {
        let _ = store
            .unadmit(user.subject, now_ms, user.admit, user_slot)
            .await;
    };
    let team_slot = match store.admit(team.subject, now_ms, team.admit).await {
        Ok(Admission::Admitted { slot_held, .. }) => slot_held,
        Ok(Admission::Refused(refusal)) => {
            give_back_user_slot().await;
            return Ok(PairGrant::Refused {
                side: Side::Team,
                refusal,
            });
        }
        Err(e) => {
            give_back_user_slot().await;
            return Err(e);
        }
    };
    let admitted = |reserved| PairGrant::Admitted {
        user_slot,
        team_slot,
        remaining_requests,
        reserved,
    };
    let reserved = match reserve_both(store, user, team, now_ms).await {
        Ok(r) => r,
        Err(e) => {
            give_back_user_slot().await;
            if team_slot {
                let _ = store.finish(Finish::slot_only(team.subject)).await;
            }
            return Err(e);
        }
    };
    Ok(admitted(reserved))
}

async fn reserve_both<S: Store + ?Sized>(
    store: &S,
    user: Scope<'_>,
    team: Scope<'_>,
    now_ms: u64,
) -> Result<PairReserved, StoreError> {
    if user.budget.is_none() && team.budget.is_none() {
        return Ok(PairReserved::Nothing);
    }
    let mut user_res = None;
    let mut remaining_tokens_minute = None;
    if let Some(b) = user.budget {
        match store
            .reserve(user.subject, now_ms, b.tokens, b.usd, b.limits)
            .await?
        {
            Reserved::Refused(refusal) => {
                return Ok(PairReserved::Refused {
                    side: Side::User,
                    refusal,
                })
            }
            Reserved::Reserved {
                reservation,
                remaining_tokens_minute: left,
            } => {
                user_res = Some(reservation);
                remaining_tokens_minute = left;
            }
        }
    }
    let undo_user = |r: Option<Reservation>| async move {
        if let Some(r) = r {
            let _ = store.finish(unreserve(user.subject, r)).await;
        }
    };
    let Some(b) = team.budget else {
        return Ok(PairReserved::Reserved {
            user: user_res,
            team: None,
            remaining_tokens_minute,
        });
    };
    match store
        .reserve(team.subject, now_ms, b.tokens, b.usd, b.limits)
        .await
    {
        Ok(Reserved::Reserved { reservation, .. }) => Ok(PairReserved::Reserved {
            user: user_res,
            team: Some(reservation),
            remaining_tokens_minute,
        }),
        Ok(Reserved::Refused(refusal)) => {
            undo_user(user_res).await;
            Ok(PairReserved::Refused {
                side: Side::Team,
                refusal,
            })
        }
        Err(e) => {
            undo_user(user_res).await;
            Err(e)
        }
    }
}

/// Settles `r` to nothing: gives back all it reserved.
fn unreserve(subject: &str, r: Reservation) -> Finish<'_> {
    Finish {
        sub: subject,
        slot_held: false,
        reservation: Some(r),
        actual_tokens: 0,
        actual_usd: 0.0,
        totals: None,
    }
}
