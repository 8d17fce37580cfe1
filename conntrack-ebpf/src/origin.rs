//! Who an entry belongs to: its network namespace (`ct->ct_net->ns.inum`) and
//! the source address of its original direction. Docker's bridge NAT entries
//! live in the host namespace (POSTROUTING MASQUERADE), so the namespace
//! alone would blame "host"; the original source address names the container.
//! Layout: include/net/netfilter/nf_conntrack.h, nf_conntrack_tuple.h (v5.10,
//! v6.1, v6.12), offsets from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use conntrack_common::{Counter, OriginKey, OriginStats};

use crate::{
    config,
    maps::{ORIGINS, count},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `BPF_NOEXIST`: create only; another CPU's concurrent create is kept.
const BPF_NOEXIST: u64 = 1;

/// The inode of a `struct net *` (0 if unreadable).
#[inline(always)]
pub fn netns_of_net(net: u64) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((net + config::off_net_inum()) as *const u32) }.unwrap_or(0)
}

/// The inode of an entry's namespace (0 if unreadable).
#[inline(always)]
pub fn netns_of_ct(ct: u64) -> u32 {
    // SAFETY: as above.
    match unsafe { bpf_probe_read_kernel((ct + config::off_ct_net()) as *const u64) } {
        Ok(net) => netns_of_net(net),
        Err(_) => 0,
    }
}

/// The origin of a `struct nf_conntrack_tuple *` in namespace `netns`, and
/// its L4 protocol number.
#[inline(always)]
pub fn tuple_origin(tuple: u64, netns: u32) -> (OriginKey, u8) {
    // SAFETY: bpf_probe_read_kernel checks every address it is given.
    let family =
        unsafe { bpf_probe_read_kernel((tuple + config::off_tuple_l3num()) as *const u16) }
            .unwrap_or(0);
    // SAFETY: as above.
    let proto =
        unsafe { bpf_probe_read_kernel((tuple + config::off_tuple_protonum()) as *const u8) }
            .unwrap_or(0);
    let mut key = OriginKey {
        netns,
        family,
        _pad: 0,
        addr: [0; 16],
    };
    match family {
        AF_INET => {
            // SAFETY: as above.
            if let Ok(a) = unsafe {
                bpf_probe_read_kernel((tuple + config::off_tuple_src()) as *const [u8; 4])
            } {
                key.addr[..4].copy_from_slice(&a);
            }
        }
        AF_INET6 => {
            // SAFETY: as above.
            if let Ok(a) = unsafe {
                bpf_probe_read_kernel((tuple + config::off_tuple_src()) as *const [u8; 16])
            } {
                key.addr = a;
            }
        }
        _ => key.family = 0,
    }
    (key, proto)
}

/// The origin of an entry (its original-direction tuple) and its L4 protocol.
#[inline(always)]
pub fn ct_origin(ct: u64) -> (OriginKey, u8) {
    let tuple = ct + config::off_tuplehash() + config::off_th_tuple();
    tuple_origin(tuple, netns_of_ct(ct))
}

/// Applies `f` to this CPU's counters of `key`, creating them if needed; when
/// the map is full, to the namespace's overflow key (family 0), so that the
/// per-namespace sums stay exact.
#[inline(always)]
pub fn bump(key: &OriginKey, f: impl Fn(&mut OriginStats)) {
    if let Some(p) = slot(key) {
        // SAFETY: this CPU's value of a per-CPU hash entry; kprobe programs do
        // not nest on one CPU, so nothing else writes it concurrently.
        f(unsafe { &mut *p });
        return;
    }
    count(Counter::OriginOverflow);
    let overflow = OriginKey {
        netns: key.netns,
        family: 0,
        _pad: 0,
        addr: [0; 16],
    };
    if let Some(p) = slot(&overflow) {
        // SAFETY: as above.
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn slot(key: &OriginKey) -> Option<*mut OriginStats> {
    if let Some(p) = ORIGINS.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = ORIGINS.insert(key, OriginStats::default(), BPF_NOEXIST);
    ORIGINS.get_ptr_mut(key)
}
