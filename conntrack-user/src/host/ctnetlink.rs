//! Conntrack over `NETLINK_NETFILTER` (ctnetlink), with nix's socket calls
//! (and libc for the one option nix has no wrapper for): a dump of one
//! namespace's table, and NEW/DESTROY event sockets.
//!
//! This is how procfs mode learns, without kprobes, which source address
//! made each entry and how long entries live. A netlink socket stays bound to
//! the network namespace it was created in, so sockets are created inside a
//! namespace ([`crate::host::namespaces::visit`]) and may then be read from any
//! thread.
//!
//! Constants: include/uapi/linux/netlink.h, include/uapi/linux/netfilter/
//! nfnetlink.h, nfnetlink_conntrack.h and nf_conntrack_tcp.h (stable uapi,
//! unchanged from 4.18 to 6.18 for everything used here).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{
        self as sock, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
        sockopt,
    },
};

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Bits of `nla_type` that are flags, not the type (netlink.h).
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;

/// `enum nfnetlink_groups`.
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_PROTOINFO: u16 = 4;
const CTA_ID: u16 = 12;
/// `enum ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_PROTO_NUM: u16 = 1;
/// `enum ctattr_protoinfo`, `ctattr_protoinfo_tcp`.
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// `enum tcp_conntrack` states in which a connection is closing or closed
/// (FIN_WAIT 4, CLOSE_WAIT 5, LAST_ACK 6, TIME_WAIT 7, CLOSE 8).
pub fn tcp_state_is_closing(state: u8) -> bool {
    (4..=8).contains(&state)
}

/// What one netlink message was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A conntrack entry: a dump row (`IPCTNL_MSG_CT_NEW` type) or a NEW event.
    New(Entry),
    /// A DESTROY event (`IPCTNL_MSG_CT_DELETE` type).
    Destroy(Entry),
    /// End of a dump.
    Done,
    /// `NLMSG_ERROR`: 0 is an ACK, else a negative errno.
    Error(i32),
    Other,
}

/// The parts of one conntrack entry ctscope uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `CTA_ID`: unique among live entries, so it pairs a NEW with its DESTROY.
    pub id: Option<u32>,
    /// Original-direction source address.
    pub src: Option<IpAddr>,
    /// L4 protocol number (`CTA_PROTO_NUM`).
    pub l4proto: Option<u8>,
    /// `CTA_PROTOINFO_TCP_STATE`, when the message carries it.
    pub tcp_state: Option<u8>,
}

/// Iterates the attributes in `buf` as `(type, payload)`; stops at the first
/// malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        // NLA_ALIGNTO = 4.
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn find(buf: &[u8], want: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == want).map(|(_, p)| p)
}

fn parse_entry(attrs_buf: &[u8]) -> Entry {
    let orig = find(attrs_buf, CTA_TUPLE_ORIG);
    let ip = orig.and_then(|o| find(o, CTA_TUPLE_IP));
    let src = ip.and_then(|ip| {
        if let Some(a) = find(ip, CTA_IP_V4_SRC).and_then(|a| <[u8; 4]>::try_from(a).ok()) {
            return Some(IpAddr::V4(Ipv4Addr::from(a)));
        }
        find(ip, CTA_IP_V6_SRC)
            .and_then(|a| <[u8; 16]>::try_from(a).ok())
            .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
    });
    let l4proto = orig
        .and_then(|o| find(o, CTA_TUPLE_PROTO))
        .and_then(|p| find(p, CTA_PROTO_NUM))
        .and_then(|n| n.first().copied());
    let tcp_state = find(attrs_buf, CTA_PROTOINFO)
        .and_then(|p| find(p, CTA_PROTOINFO_TCP))
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied());
    // CTA_ID is big-endian (ctnetlink_dump_id: nla_put_be32).
    let id = find(attrs_buf, CTA_ID)
        .and_then(|a| <[u8; 4]>::try_from(a).ok())
        .map(u32::from_be_bytes);
    Entry {
        id,
        src,
        l4proto,
        tcp_state,
    }
}

/// Splits one `recv` buffer into messages.
pub fn parse_messages(buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let body = &rest[NLMSG_HDRLEN..len];
        out.push(match ty {
            NLMSG_DONE => Message::Done,
            NLMSG_ERROR => Message::Error(
                body.get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(-libc::EINVAL, i32::from_ne_bytes),
            ),
            NLMSG_NOOP | NLMSG_OVERRUN => Message::Other,
            t if t >> 8 == NFNL_SUBSYS_CTNETLINK && body.len() >= NFGENMSG_LEN => {
                let entry = parse_entry(&body[NFGENMSG_LEN..]);
                match t & 0xff {
                    IPCTNL_MSG_CT_NEW => Message::New(entry),
                    IPCTNL_MSG_CT_DELETE => Message::Destroy(entry),
                    _ => Message::Other,
                }
            }
            _ => Message::Other,
        });
        // NLMSG_ALIGNTO = 4.
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
    }
    out
}

/// A `NETLINK_NETFILTER` socket, bound to the namespace it was created in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace, subscribed
    /// to `groups` (`NFNLGRP_*`; none for a dump).
    pub fn open(groups: &[u32]) -> io::Result<Socket> {
        let fd = sock::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        let s = Socket { fd };
        // pid 0: the kernel picks one; an empty group mask, as before: the
        // groups are joined below, one NETLINK_ADD_MEMBERSHIP each.
        sock::bind(s.raw(), &NetlinkAddr::new(0, 0))?;
        for g in groups {
            s.add_membership(*g)?;
        }
        Ok(s)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// NETLINK_ADD_MEMBERSHIP, which nix has no socket option for: the one
    /// raw setsockopt left here.
    fn add_membership(&self, group: u32) -> io::Result<()> {
        let value = group as i32;
        // SAFETY: `value` is an int that lives across the call; its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                self.raw(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&raw const value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A large receive buffer, beyond `rmem_max` (needs CAP_NET_ADMIN): event
    /// bursts arrive faster than one reader drains them.
    pub fn set_rcvbuf_force(&self, bytes: usize) -> io::Result<()> {
        // nix passes it on as the C int SO_RCVBUFFORCE takes.
        sock::setsockopt(&self.fd, sockopt::RcvBufForce, &bytes)?;
        Ok(())
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        let flags = fcntl(&self.fd, FcntlArg::F_GETFL)?;
        // The flags as the kernel gave them (from_bits_retain keeps any bit
        // nix has no name for), plus O_NONBLOCK.
        fcntl(
            &self.fd,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )?;
        Ok(())
    }

    /// The socket is connected to nothing: a netlink send without an
    /// address goes to the kernel.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        sock::send(self.raw(), msg, MsgFlags::empty())?;
        Ok(())
    }

    /// One datagram into `buf`: its length. `ENOBUFS` means the kernel
    /// dropped messages because the receive buffer was full (the errno is
    /// kept: nix's error becomes the same io::Error).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(sock::recv(self.raw(), buf, MsgFlags::empty())?)
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

/// For poll(2) through nix, which borrows the descriptor.
impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The `IPCTNL_MSG_CT_GET` dump request for every family.
pub fn dump_request(seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC dumps every l3 family (ctnetlink_filter_match).
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, NFNETLINK_V0, 0, 0]);
    m
}

/// Every entry of the calling thread's namespace (run it inside
/// [`crate::host::namespaces::visit`] for another namespace).
pub fn dump() -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    dump_each(|e| out.push(e))?;
    Ok(out)
}

/// Every entry of the calling thread's namespace, handed to `f` one at a
/// time as the kernel sends them: memory does not grow with the table (a
/// scrape of `serve` reads a million-entry table this way).
pub fn dump_each(mut f: impl FnMut(Entry)) -> io::Result<()> {
    let s = Socket::open(&[])?;
    s.send(&dump_request(1))?;
    // Dump datagrams are at most a few pages; a larger buffer is never cut.
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = s.recv(&mut buf)?;
        for m in parse_messages(&buf[..n]) {
            match m {
                Message::New(e) => f(e),
                Message::Done => return Ok(()),
                Message::Error(e) if e < 0 => return Err(io::Error::from_raw_os_error(-e)),
                _ => {}
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// Original source addresses of the entries in a `/proc/net/nf_conntrack`
/// text (the first `src=` of each line is the original direction's): the
/// fallback where ctnetlink is refused.
pub fn proc_table_sources(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("src="))
                .and_then(|a| a.parse().ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_request_layout() {
        let m = dump_request(7);
        assert_eq!(m.len(), 20);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 20);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0101);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x0301);
    }

    #[test]
    fn proc_table_lines() {
        let t = "ipv4     2 udp      17 29 src=172.17.0.2 dst=198.18.2.1 sport=40000 dport=9 [UNREPLIED] src=198.18.2.1 dst=10.0.0.5 sport=9 dport=40000 mark=0 zone=0 use=2\n\
                 ipv6     10 udp      17 2 src=0000:0000:0000:0000:0000:0000:0000:0001 dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=1 dport=9 src=0000:0000:0000:0000:0000:0000:0000:0001 dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=9 dport=1 mark=0 zone=0 use=2\n";
        assert_eq!(
            proc_table_sources(t),
            vec![
                IpAddr::from([172, 17, 0, 2]),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
    }

    #[test]
    fn malformed_input_yields_no_panic() {
        assert!(parse_messages(&[]).is_empty());
        assert!(parse_messages(&[0xff; 15]).is_empty());
        // A length past the end stops parsing.
        let mut m = dump_request(1);
        m[0] = 200;
        assert!(parse_messages(&m).is_empty());
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    // Captured on Linux 6.18.44 (x86_64, little endian) in a namespace with an
    // nftables `ct state new` rule: UDP 127.0.0.1 -> 127.0.0.1:9, a TCP
    // connection to 127.0.0.1:8080 closed at once (TIME_WAIT timeout 1 s), and
    // UDP ::1 -> ::1:9.
    const NEW_UDP4: &str = "94000000000100060000000000000000020000003400018014000180080001007f000001080002007f0000011c00028005000100110000000600020097f0000006000300000900003400028014000180080001007f000001080002007f0000011c000280050001001100000006000200000900000600030097f0000008000c002a918d1908000300000000080800070000000002";
    const NEW_TCP4: &str = "c4000000000100060000000000000000020000003400018014000180080001007f000001080002007f0000011c000280050001000600000006000200d93e0000060003001f9000003400028014000180080001007f000001080002007f0000011c0002800500010006000000060002001f90000006000300d93e000008000c007017080308000300000000080800070000000078300004802c0001800500010001000000050002000a000000050003000000000006000400030000000600050000000000";
    const DESTROY_TCP4: &str = "9c000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c000280050001000600000006000200d93e0000060003001f9000003400028014000180080001007f000001080002007f0000011c0002800500010006000000060002001f90000006000300d93e000008000c0070170803080003000000020e100004800c0001800500010007000000";
    const NEW_UDP6: &str = "c40000000001000600000000000000000a0000004c0001802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c000280050001001100000006000200c1f5000006000300000900004c0002802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c0002800500010011000000060002000009000006000300c1f5000008000c003d79a32008000300000000080800070000000002";
    // One dump datagram (NLM_F_MULTI) holding two entries, UDP v4 and v6; the
    // dump's NLMSG_DONE came in the next datagram.
    const DUMP_TWO: &str = "a40000000001020001000000522d0000020000003400018014000180080001007f000001080002007f0000011c0002800500010011000000060002008908000006000300000900003400028014000180080001007f000001080002007f0000011c0002800500010011000000060002000009000006000300890800000800030000000008080008000000000008000c00cd90e51308000b00000000010800070000000001d40000000001020001000000522d00000a0000004c0001802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c000280050001001100000006000200d136000006000300000900004c0002802c000180140003000000000000000000000000000000000114000400000000000000000000000000000000011c0002800500010011000000060002000009000006000300d13600000800030000000008080008000000000008000c0091df3bf808000b00000000010800070000000001";
    const DUMP_DONE: &str = "1400000003000200010000006a2b000000000000";

    #[test]
    fn parses_captured_events() {
        let lo4 = IpAddr::from([127, 0, 0, 1]);
        let m = parse_messages(&hex(NEW_UDP4));
        assert_eq!(
            m,
            vec![Message::New(Entry {
                id: Some(0x2a91_8d19),
                src: Some(lo4),
                l4proto: Some(17),
                tcp_state: None,
            })]
        );
        let new = parse_messages(&hex(NEW_TCP4));
        let gone = parse_messages(&hex(DESTROY_TCP4));
        let (Message::New(a), Message::Destroy(b)) = (&new[0], &gone[0]) else {
            panic!("{new:?} {gone:?}");
        };
        assert_eq!(a.id, b.id, "CTA_ID pairs NEW with DESTROY");
        assert_eq!(
            (a.l4proto, a.tcp_state),
            (Some(6), Some(1)),
            "SYN_SENT at NEW"
        );
        assert_eq!(b.tcp_state, Some(7), "TIME_WAIT at DESTROY");
        assert!(tcp_state_is_closing(7) && !tcp_state_is_closing(3));
        let v6 = parse_messages(&hex(NEW_UDP6));
        let Message::New(e) = &v6[0] else {
            panic!("{v6:?}")
        };
        assert_eq!(e.src, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(e.l4proto, Some(17));
    }

    #[test]
    fn parses_captured_dump() {
        let m = parse_messages(&hex(DUMP_TWO));
        assert_eq!(m.len(), 2);
        let srcs: Vec<_> = m
            .iter()
            .map(|m| match m {
                Message::New(e) => e.src,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            srcs,
            vec![
                Some(IpAddr::from([127, 0, 0, 1])),
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
            ]
        );
        assert_eq!(parse_messages(&hex(DUMP_DONE)), vec![Message::Done]);
    }
}
