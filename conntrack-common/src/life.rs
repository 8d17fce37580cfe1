//! Lifetimes, measured in the kernel: when an entry is inserted its birth
//! goes into a slot of `LIFE_SLOTS`, a preallocated table of buckets keyed
//! by a hash of its `struct nf_conn *`; when it dies the slot is found,
//! cleared, and the lifetime counted in `LIFE_HIST`, one log-linear
//! histogram per (protocol, end, detail) row. No record per event leaves
//! the kernel and nothing is allocated per connection.

/// Slots per bucket: one 64-byte cache line of `u64` slots.
pub const BUCKET_SLOTS: usize = 8;
/// A bucket of `LIFE_SLOTS`.
pub type Bucket = [u64; BUCKET_SLOTS];

/// A slot is `tag << TAG_SHIFT | born`, 0 when free. `born` is
/// `bpf_ktime_get_ns() >> UNIT_SHIFT` (units of 1,024 ns) in the low
/// 44 bits: it wraps after 2^54 ns, 208 days.
pub const UNIT_SHIFT: u32 = 10;
pub const TAG_SHIFT: u32 = 44;
pub const BORN_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// A hash of an entry's address (`struct nf_conn *`, 8-byte aligned):
/// the bucket comes from its top 32 bits, the tag from 19 bits below
/// them (a 20th always set: see [`tag`]), so that two live entries
/// share a bucket and a tag with odds of 2^-19 per pair in one bucket.
#[inline(always)]
pub fn hash(ct: u64) -> u64 {
    (ct >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The bucket of hash `h` in a table of `mask + 1` buckets.
#[inline(always)]
pub fn bucket(h: u64, mask: u32) -> u32 {
    ((h >> 32) as u32) & mask
}

/// The tag of hash `h`, shifted into place; never 0 (bit 19 of the
/// tag is always set), so a taken slot is never 0.
#[inline(always)]
pub fn tag(h: u64) -> u64 {
    (((h >> 12) & 0x7_FFFF) | 0x8_0000) << TAG_SHIFT
}

/// Slots per histogram row: 16 per power of two of the lifetime in
/// units of 1,024 ns (6.25% wide, lifetimes below 16 units each in a
/// slot of their own), up to 2^44 units (208 days, the rest clamped
/// into the last), and one more for deaths without a lifetime.
pub const HIST_SLOTS: u32 = 657;
/// The slot of deaths whose lifetime was not measured.
pub const UNKNOWN_SLOT: u32 = HIST_SLOTS - 1;
const MAX_OCTAVE: u32 = 43;
/// One row of `LIFE_HIST`.
pub type Hist = [u64; HIST_SLOTS as usize];

/// The slot of a lifetime of `units` (see [`HIST_SLOTS`]).
#[inline(always)]
pub fn slot(units: u64) -> u32 {
    if units < 16 {
        return units as u32;
    }
    let b = super::log2_floor(units);
    if b > MAX_OCTAVE {
        return UNKNOWN_SLOT - 1;
    }
    (b - 3) * 16 + ((units >> (b - 4)) & 15) as u32
}

/// The smallest lifetime (units) in `slot`: the inverse of [`slot`].
pub fn slot_floor(slot: u32) -> u64 {
    if slot < 16 {
        return u64::from(slot);
    }
    let (b, sub) = (slot / 16 + 3, u64::from(slot % 16));
    (16 + sub) << (b - 4)
}

/// Protocol classes of the rows.
pub const TCP: u8 = 0;
pub const UDP: u8 = 1;
pub const ICMP: u8 = 2;
pub const ICMPV6: u8 = 3;
pub const OTHER: u8 = 4;

/// The class of an L4 protocol number.
#[inline(always)]
pub fn class(proto: u8) -> u8 {
    match proto {
        6 => TCP,
        17 | 136 => UDP, // UDP, UDP-Lite
        1 => ICMP,
        58 => ICMPV6,
        _ => OTHER,
    }
}

/// TCP states kept apart in a row: `enum tcp_conntrack` 0..9
/// (include/uapi/linux/netfilter/nf_conntrack_tcp.h), larger ones in 9.
pub const TCP_STATES: u8 = 10;
/// Rows: TCP timeouts and closes by state (20), TCP's other ends (4),
/// UDP by end and assured (12), ICMP, ICMPv6 and the rest by end (6 each).
pub const ROWS: u32 = 54;

/// The row of a death: protocol class, how it ended (`super::end`), the
/// TCP state at death and whether the entry was assured.
#[inline(always)]
pub fn row(class: u8, end: u8, tcp_state: u8, assured: bool) -> u32 {
    let end = u32::from(if end > super::end::OTHER {
        super::end::OTHER
    } else {
        end
    });
    match class {
        TCP => match end as u8 {
            super::end::TIMEOUT | super::end::TCP_CLOSED => {
                let s = if tcp_state < TCP_STATES {
                    tcp_state
                } else {
                    TCP_STATES - 1
                };
                end * u32::from(TCP_STATES) + u32::from(s)
            }
            // early_drop 2 .. other 5 -> 20..23
            _ => 18 + end,
        },
        UDP => 24 + end * 2 + u32::from(assured),
        ICMP => 36 + end,
        ICMPV6 => 42 + end,
        _ => 48 + end,
    }
}

/// What a row holds: (protocol class, end, TCP state if TCP and a
/// timeout or close, assured if UDP). The inverse of [`row`].
pub fn row_info(row: u32) -> Option<(u8, u8, Option<u8>, Option<bool>)> {
    let r = row;
    Some(match r {
        0..20 => (TCP, (r / 10) as u8, Some((r % 10) as u8), None),
        20..24 => (TCP, (r - 18) as u8, None, None),
        24..36 => (UDP, ((r - 24) / 2) as u8, None, Some((r - 24) % 2 == 1)),
        36..42 => (ICMP, (r - 36) as u8, None, None),
        42..48 => (ICMPV6, (r - 42) as u8, None, None),
        48..54 => (OTHER, (r - 48) as u8, None, None),
        _ => return None,
    })
}
