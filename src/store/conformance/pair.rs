//! [`Store::admit_reserve_pair`]: a caller and its team taken together.

use super::*;

fn scope(subject: &str, admit: AdmitLimits, budget: Option<BudgetAsk>) -> Scope<'_> {
    Scope {
        subject,
        admit,
        budget,
    }
}

fn usd_ask(usd: f64, per_day: f64) -> BudgetAsk {
    BudgetAsk {
        tokens: 10,
        usd,
        limits: BudgetLimits {
            tokens_per_minute: None,
            tokens_per_day: None,
            usd_per_day: Some(per_day),
        },
    }
}

fn granted(g: PairGrant) -> (bool, bool, Option<u64>, PairReserved) {
    match g {
        PairGrant::Admitted {
            user_slot,
            team_slot,
            remaining_requests,
            reserved,
        } => (user_slot, team_slot, remaining_requests, reserved),
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// A refusal by the team's admission limits leaves nothing in the caller's
/// scope: not a request in its window, not a slot.
pub async fn a_team_refusal_takes_nothing_from_the_caller(s: &dyn StoreTesting) {
    let (u, t) = (subject("pair-u"), team_subject(&subject("pair-t")));
    let user = AdmitLimits {
        requests_per_minute: Some(5),
        max_concurrent: Some(5),
    };
    let team = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(1),
    };
    let (us, ts, left, r) = granted(
        s.admit_reserve_pair(scope(&u, user, None), scope(&t, team, None), T0)
            .await
            .unwrap(),
    );
    assert_eq!(
        (us, ts, left, r),
        (true, true, Some(4), PairReserved::Nothing)
    );
    let g = s
        .admit_reserve_pair(scope(&u, user, None), scope(&t, team, None), T0 + 1)
        .await
        .unwrap();
    match g {
        PairGrant::Refused {
            side: Side::Team,
            refusal,
        } => assert_eq!(refusal.limit.key(), "max_concurrent"),
        other => panic!("expected the team's refusal, got {other:?}"),
    }
    // The refused request is not in the caller's window, nor holds a slot.
    assert_eq!(remaining(s.admit(&u, T0 + 2, user).await.unwrap()), Some(3));
    // The caller's own refusal is the caller's, and takes nothing from the team.
    let tight = AdmitLimits {
        requests_per_minute: Some(2),
        max_concurrent: None,
    };
    let g = s
        .admit_reserve_pair(scope(&u, tight, None), scope(&t, team, None), T0 + 3)
        .await
        .unwrap();
    assert!(
        matches!(g, PairGrant::Refused { side: Side::User, refusal } if refusal.limit.key() == "requests_per_minute"),
        "{g:?}"
    );
    s.release_slot(&t).await.unwrap();
    let (_, ts, _, _) = granted(
        s.admit_reserve_pair(
            scope(&subject("pair-u2"), user, None),
            scope(&t, team, None),
            T0 + 4,
        )
        .await
        .unwrap(),
    );
    assert!(ts, "the team's only slot was free again");
}

/// Members' budgets are their own; the team's is shared. A refusal by the
/// team's budget reserves nothing in either scope and keeps both slots.
pub async fn a_team_budget_binds_its_members_together(s: &dyn StoreTesting) {
    let t = team_subject(&subject("pair-t"));
    let slot = AdmitLimits {
        requests_per_minute: None,
        max_concurrent: Some(10),
    };
    let before = s.inflight_reservations().await.unwrap();
    let members: Vec<String> = (0..3).map(|_| subject("pair-m")).collect();
    let mut held = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let g = s
            .admit_reserve_pair(
                scope(m, slot, Some(usd_ask(0.2, 1.0))),
                scope(&t, slot, Some(usd_ask(0.2, 0.5))),
                T0 + i as u64,
            )
            .await
            .unwrap();
        let (us, ts, _, r) = granted(g);
        assert!(us && ts);
        match (i, r) {
            (0 | 1, PairReserved::Reserved { user, team, .. }) => {
                held.push((m.clone(), user.expect("user"), team.expect("team")));
            }
            (
                2,
                PairReserved::Refused {
                    side: Side::Team,
                    refusal,
                },
            ) => assert_eq!(refusal.limit.key(), "usd_per_day"),
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(s.inflight_reservations().await.unwrap(), before + 4);
    // The third member's own budget is whole: the team's refusal took none.
    let third = &members[2];
    let r = s.reserve(third, T0 + 5, 10, 1.0, usd_ask(1.0, 1.0).limits);
    let (r, _) = reservation(r.await.unwrap());
    s.settle(third, r, 0, 0.0).await.unwrap();
    // A member's own budget refuses for the member.
    let g = s
        .admit_reserve_pair(
            scope(&members[0], slot, Some(usd_ask(0.9, 1.0))),
            scope(&t, slot, Some(usd_ask(0.0, 0.5))),
            T0 + 6,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            granted(g).3,
            PairReserved::Refused {
                side: Side::User,
                ..
            }
        ),
        "{g:?}"
    );
    // Settling both scopes gives the team back what was not used.
    for (m, ur, tr) in &held {
        s.settle(m, *ur, 10, 0.05).await.unwrap();
        s.settle(&t, *tr, 10, 0.05).await.unwrap();
    }
    assert_eq!(s.inflight_reservations().await.unwrap(), before);
    let g = s
        .admit_reserve_pair(
            scope(&members[2], slot, Some(usd_ask(0.4, 1.0))),
            scope(&t, slot, Some(usd_ask(0.4, 0.5))),
            T0 + 7,
        )
        .await
        .unwrap();
    assert!(
        matches!(granted(g).3, PairReserved::Reserved { .. }),
        "0.1 spent, 0.4 more fits in 0.5: {g:?}"
    );
}

/// Many members at once never reserve more than the team's budget.
pub async fn concurrent_members_never_overspend_their_team(s: &dyn StoreTesting) {
    let t = team_subject(&subject("pair-race"));
    let members: Vec<String> = (0..8).map(|_| subject("pair-m")).collect();
    let none = AdmitLimits::default();
    let attempts = (0..40).map(|i| {
        let m = &members[i % members.len()];
        s.admit_reserve_pair(
            scope(m, none, Some(usd_ask(0.05, 10.0))),
            scope(&t, none, Some(usd_ask(0.05, 0.55))),
            T0 + i as u64,
        )
    });
    let results = futures_util::future::join_all(attempts).await;
    let team_usd: f64 = results
        .into_iter()
        .filter_map(|g| match granted(g.unwrap()).3 {
            PairReserved::Reserved { team, .. } => team.map(|r| r.usd),
            _ => None,
        })
        .sum();
    assert!(
        (team_usd - 0.55).abs() < 1e-9,
        "$0.55 allows exactly 11 at $0.05: {team_usd}"
    );
}
