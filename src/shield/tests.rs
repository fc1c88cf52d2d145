use super::auth::sliding_verdict;
use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn trips_beyond_the_limit_and_only_for_that_address() {
    let shield = AuthShield::new(3);
    let bad = ip("10.0.0.1");
    for _ in 0..3 {
        assert_eq!(shield.check(bad), Ok(()));
        shield.failed(bad);
    }
    let tripped = shield.check(bad).expect_err("fourth try refused");
    assert!((1..=120).contains(&tripped.retry_after_secs), "{tripped:?}");
    assert_eq!(shield.check(ip("10.0.0.2")), Ok(()));
    // Refusals are not failures: checking again changes nothing.
    for _ in 0..100 {
        assert!(shield.check(bad).is_err());
    }
    assert_eq!(shield.check(ip("10.0.0.2")), Ok(()));
}

#[test]
fn recovers_once_the_failures_slide_out() {
    let shield = AuthShield::with_window(2, Duration::from_millis(200));
    let bad = ip("10.0.0.9");
    shield.failed(bad);
    shield.failed(bad);
    assert!(shield.check(bad).is_err());
    // Two windows on, nothing of them is left.
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(shield.check(bad), Ok(()));
}

#[test]
fn sliding_estimate_and_wait() {
    let c = |prev, curr, f: f64| (prev, curr, f);
    let verdict_for_test = |(prev, curr, f): (isize, isize, f64), limit| {
        sliding_verdict(prev, curr, f, Duration::from_secs(60), limit)
    };
    // Under the limit.
    assert_eq!(verdict_for_test(c(0, 59, 0.5), 60.0), None);
    // At the limit in this window: the rest of it (30 s), then none more
    // (curr == limit slides under at once).
    let w = verdict_for_test(c(0, 60, 0.5), 60.0).expect("tripped");
    assert!((w - 30.0).abs() < 1e-9, "{w}");
    // 120 in this window: the rest of it, then half the next.
    let w = verdict_for_test(c(0, 120, 0.5), 60.0).expect("tripped");
    assert!((w - 60.0).abs() < 1e-9, "{w}");
    // The last window's 80 weighted by 3/4, plus 10: 70 >= 60; falls under
    // 60 once 80 * (1 - g) < 50, g > 0.375.
    let w = verdict_for_test(c(80, 10, 0.25), 60.0).expect("tripped");
    assert!((w - 7.5).abs() < 1e-9, "{w}");
    // Slid out far enough already.
    assert_eq!(verdict_for_test(c(80, 10, 0.5), 60.0), None);
}

#[test]
fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
    let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("v6");
    let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("v6");
    let other: Ipv6Addr = "2001:db8:1:3::1".parse().expect("v6");
    assert_eq!(
        ClientKey::from(IpAddr::V6(a)),
        ClientKey::from(IpAddr::V6(b))
    );
    assert_ne!(
        ClientKey::from(IpAddr::V6(a)),
        ClientKey::from(IpAddr::V6(other))
    );
    let v4 = Ipv4Addr::new(192, 0, 2, 7);
    assert_eq!(
        ClientKey::from(IpAddr::V6(v4.to_ipv6_mapped())),
        ClientKey::from(IpAddr::V4(v4))
    );
    let shield = AuthShield::new(1);
    shield.failed(IpAddr::V6(a));
    assert!(shield.check(IpAddr::V6(b)).is_err());
    assert_eq!(shield.check(IpAddr::V6(other)), Ok(()));
}

#[test]
fn innocent_addresses_survive_many_failing_ones() {
    // 20000 addresses failing once each under a limit of 10: no address
    // that never failed is refused.
    let shield = AuthShield::new(10);
    for i in 0..20_000u32 {
        shield.failed(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
    }
    for i in 0..1000u32 {
        let innocent = IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 + i));
        assert_eq!(shield.check(innocent), Ok(()), "{innocent}");
    }
}

#[test]
fn inflight_caps_and_gives_back_on_drop() {
    let limit = InflightLimit::new(2);
    let a = limit.try_acquire().expect("first");
    let b = limit.try_acquire().expect("second");
    assert_eq!(limit.try_acquire().err(), Some(Full { max: 2 }));
    // A refused taker left nothing behind.
    drop(a);
    let c = limit.try_acquire().expect("a slot was given back");
    assert!(limit.try_acquire().is_err());
    drop((b, c));
    let all: Vec<_> = (0..2).map(|_| limit.try_acquire().expect("free")).collect();
    assert_eq!(all.len(), 2);
}

#[test]
fn inflight_never_overshoots_under_races() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let limit = Arc::new(InflightLimit::new(4));
    let held = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (limit, held, peak) = (limit.clone(), held.clone(), peak.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    if let Ok(slot) = limit.try_acquire() {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(peak.load(Ordering::SeqCst) <= 4);
    let all: Vec<_> = (0..4).map(|_| limit.try_acquire().expect("free")).collect();
    assert_eq!(all.len(), 4);
}
