//! Confirmations of candidate matches that a regular expression alone
//! over-approximates: checksums (Luhn, IBAN mod-97) and the surroundings a
//! regex without look-around cannot see. Each takes the whole text and the
//! candidate's span, and never panics on any input.

/// A confirmation: whether `hay[start..end]` really is what the pattern
/// looks for.
pub type Confirm = fn(hay: &[u8], start: usize, end: usize) -> bool;

fn before(hay: &[u8], start: usize) -> Option<u8> {
    start.checked_sub(1).and_then(|i| hay.get(i).copied())
}

fn after(hay: &[u8], end: usize) -> Option<u8> {
    hay.get(end).copied()
}

fn digits(s: &[u8]) -> impl Iterator<Item = u8> + '_ {
    s.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0')
}

/// The Luhn checksum over the digits of `s` (other bytes ignored).
pub fn luhn(s: &[u8]) -> bool {
    let ds: Vec<u8> = digits(s).collect();
    if ds.is_empty() {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Issuer prefixes and lengths of the card networks people paste: a Luhn
/// check alone passes one random digit string in ten (order ids,
/// millisecond timestamps), a known network prefix too is far rarer.
fn card_network(ds: &[u8]) -> bool {
    let n = ds.len();
    let prefix = |k: usize| -> u32 {
        ds.iter()
            .take(k)
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    match p1 {
        // Visa
        4 => matches!(n, 13 | 16 | 19),
        // Mastercard (51–55, 2221–2720)
        5 => (51..=55).contains(&p2) && n == 16,
        2 => (2221..=2720).contains(&p4) && n == 16,
        // Amex 34/37, Diners 300–305/36/38/39, JCB 3528–3589
        3 => {
            (matches!(p2, 34 | 37) && n == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39))
                    && (14..=19).contains(&n))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&n))
        }
        // Discover 6011/644–649/65, UnionPay 62, Maestro 6304/67
        6 => {
            (p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || (622126..=622925).contains(&p6)
                || p2 == 62
                || p2 == 67
                || p4 == 6304)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

/// A payment card number: 13–19 digits, grouped consistently (no
/// separators, or one kind of separator between groups of at least three
/// digits), a known network prefix, and a valid Luhn checksum.
pub fn card(hay: &[u8], start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    if before(hay, start).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        || after(hay, end).is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return false;
    }
    let seps: Vec<u8> = s.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    if !seps.is_empty() {
        let sep = seps[0];
        if s.split(|&b| b == sep).any(|g| g.len() < 3) {
            return false;
        }
    }
    let ds: Vec<u8> = digits(s).collect();
    (13..=19).contains(&ds.len()) && card_network(&ds) && luhn(s)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// ISO 13616 mod-97 over an IBAN without separators: the first four
/// characters moved to the end, letters as 10–35, the remainder must be 1.
pub fn iban_mod97(compact: &[u8]) -> bool {
    if compact.len() < 5 {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// An IBAN: a registered country with its exact length, and mod-97 = 1.
pub fn iban(hay: &[u8], start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let compact: Vec<u8> = s.iter().copied().filter(|&b| b != b' ').collect();
    let Some(country) = compact.get(..2) else {
        return false;
    };
    let len_ok = IBAN_LENGTHS
        .iter()
        .any(|(c, n)| c.as_slice() == country && *n == compact.len());
    len_ok && iban_mod97(&compact)
}

/// A phone number in international form (`+` and 8–15 digits, E.164) not
/// glued to other numbers or words.
pub fn phone_international(hay: &[u8], start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    let n = digits(s).count();
    (8..=15).contains(&n)
        && !before(hay, start)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'/' | b'_'))
        && !after(hay, end).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !continues_number(hay, end)
}

/// A North American number written with separators, `(415) 555-0132` or
/// `415-555-0132`, not part of a longer dotted or dashed sequence
/// (versions, IP-like ids, dates, UUID fragments).
pub fn phone_nanp(hay: &[u8], start: usize, end: usize) -> bool {
    !before(hay, start).is_some_and(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'/' | b':' | b'_' | b'+' | b'#')
    }) && !after(hay, end).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !continues_number(hay, end)
}

/// A separator followed by a digit: the match is the head of a longer
/// number (`1.2.3.4`, `2024-01-15-0001`).
fn continues_number(hay: &[u8], end: usize) -> bool {
    matches!(after(hay, end), Some(b'.' | b'-' | b'/' | b':'))
        && hay.get(end + 1).is_some_and(u8::is_ascii_digit)
}

/// An e-mail address, not an scp/ssh target (`git@github.com:org/repo`,
/// `ssh deploy@host.internal`).
pub fn email(hay: &[u8], start: usize, end: usize) -> bool {
    if after(hay, end) == Some(b':')
        && hay
            .get(end + 1)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'~' | b'.' | b'_'))
    {
        return false;
    }
    let line_start = hay
        .get(..start)
        .and_then(|h| h.iter().rposition(|&b| b == b'\n'))
        .map_or(0, |p| p + 1);
    let line = hay.get(line_start..start).unwrap_or_default();
    let line = line
        .get(line.len().saturating_sub(64)..)
        .unwrap_or_default();
    !COMMANDS.iter().any(|c| contains_word(line, c))
}

/// Commands whose `user@host` argument is a login, not an address.
const COMMANDS: [&[u8]; 6] = [b"ssh", b"scp", b"sftp", b"rsync", b"mosh", b"ssh-copy-id"];

fn contains_word(hay: &[u8], word: &[u8]) -> bool {
    hay.windows(word.len()).enumerate().any(|(i, w)| {
        w == word
            && (i == 0 || !hay[i - 1].is_ascii_alphanumeric())
            && hay
                .get(i + word.len())
                .is_some_and(|&b| b == b' ' || b == b'\t')
    })
}

/// A key-like token has both letters and digits: real keys are random,
/// words and slugs (`sk-learn-…`) are not.
pub fn mixed(hay: &[u8], start: usize, end: usize) -> bool {
    let Some(s) = hay.get(start..end) else {
        return false;
    };
    s.iter().any(u8::is_ascii_digit) && s.iter().any(u8::is_ascii_alphabetic)
}
