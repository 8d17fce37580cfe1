//! Who an entry belongs to: its network namespace (`ct->ct_net->ns.inum`) and
//! the source address of its original direction. Docker's bridge NAT entries
//! live in the host namespace (POSTROUTING MASQUERADE), so the namespace
//! alone would blame "host"; the original source address names the container.
//! Layout: include/net/netfilter/nf_conntrack.h, nf_conntrack_tuple.h (v5.10,
//! v6.1, v6.12), offsets from BTF.

use conntrack_common::{Counter, OriginKey, OriginStats};

use crate::{
    config,
    counters::{atomic_add, count},
    maps::ORIGINS,
    mem::Kmem,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `BPF_NOEXIST`: create only; another CPU's concurrent create is kept.
const BPF_NOEXIST: u64 = 1;

/// The inode of a `struct net *` (0 if unreadable).
#[inline(always)]
pub(crate) fn netns_of_net<M: Kmem>(net: u64) -> u32 {
    M::read::<u32>(net + config::off_net_inum()).unwrap_or(0)
}

/// The inode of an entry's namespace (0 if unreadable).
#[inline(always)]
pub(crate) fn netns_of_ct<M: Kmem>(ct: u64) -> u32 {
    match M::read::<u64>(ct + config::off_ct_net()) {
        Some(net) => netns_of_net::<M>(net),
        None => 0,
    }
}

/// The origin of a `struct nf_conntrack_tuple *` in namespace `netns`, and
/// its L4 protocol number. The address is read as 32-bit words: the
/// member is a union of `__be32 all[4]`, `ip` and `ip6` (a direct read
/// must match a member's layout).
#[inline(always)]
pub(crate) fn tuple_origin<M: Kmem>(tuple: u64, netns: u32) -> (OriginKey, u8) {
    let family = M::read::<u16>(tuple + config::off_tuple_l3num()).unwrap_or(0);
    let proto = M::read::<u8>(tuple + config::off_tuple_protonum()).unwrap_or(0);
    let mut key = OriginKey {
        netns,
        family,
        _pad: 0,
        addr: [0; 4],
    };
    let src = tuple + config::off_tuple_src();
    match family {
        AF_INET => key.addr[0] = M::read::<u32>(src).unwrap_or(0),
        AF_INET6 => {
            key.addr = [
                M::read::<u32>(src).unwrap_or(0),
                M::read::<u32>(src + 4).unwrap_or(0),
                M::read::<u32>(src + 8).unwrap_or(0),
                M::read::<u32>(src + 12).unwrap_or(0),
            ];
        }
        _ => key.family = 0,
    }
    (key, proto)
}

/// The origin of an entry (its original-direction tuple) and its L4 protocol.
#[inline(always)]
pub(crate) fn ct_origin<M: Kmem>(ct: u64) -> (OriginKey, u8) {
    let tuple = ct + config::off_tuplehash() + config::off_th_tuple();
    tuple_origin::<M>(tuple, netns_of_ct::<M>(ct))
}

/// The key of a namespace's counts whose source is not known (family 0):
/// refusals counted where only the namespace is, and the overflow of a
/// full map.
#[inline(always)]
pub(crate) fn unknown_source(netns: u32) -> OriginKey {
    OriginKey {
        netns,
        family: 0,
        _pad: 0,
        addr: [0; 4],
    }
}

/// Adds one to the counter `field` picks of this CPU's counters of `key`,
/// creating them if needed; when the map is full, to the namespace's
/// overflow key (family 0), so that the per-namespace sums stay exact.
#[inline(always)]
pub(crate) fn bump(key: &OriginKey, field: impl Fn(&mut OriginStats) -> &mut u64) {
    let p = if let Some(p) = slot(key) {
        p
    } else {
        count(Counter::OriginOverflow);
        match slot(&unknown_source(key.netns)) {
            Some(p) => p,
            None => return,
        }
    };
    // SAFETY: this CPU's value of a per-CPU hash entry, which stays
    // allocated while the program runs (RCU). Different programs can nest
    // on one CPU in fentry mode (counters.rs `Scratch`), so the add is atomic.
    unsafe { atomic_add(field(&mut *p), 1) };
}

#[inline(always)]
fn slot(key: &OriginKey) -> Option<*mut OriginStats> {
    if let Some(p) = ORIGINS.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = ORIGINS.insert(key, OriginStats::default(), BPF_NOEXIST);
    ORIGINS.get_ptr_mut(key)
}
