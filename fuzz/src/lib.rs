//! What the fuzz targets and the `seeds` binary share: the BTF lookups
//! ctscope makes (probe/offsets.rs) and a way to cut a real vmlinux BTF into a base
//! and a split BTF, for hosts where no module has split BTF (conntrack built
//! in, as on the machine this was written on).

use std::sync::Arc;

use ctscope::{host::btf::Btf, probe::offsets::KernelBtf};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Every lookup `KernelBtf::offsets` makes, one by one (`offsets()` stops at
/// the first missing member, so a fuzzed blob would rarely reach the later
/// ones), then `offsets()` itself. Errors are answers; only a panic, a hang
/// or an allocation failure is a finding.
pub fn exercise(kb: &KernelBtf) {
    let lookups: &[(&str, &[&str])] = &[
        ("nf_conn", &["tuplehash"]),
        ("nf_conntrack_tuple_hash", &["hnnode"]),
        ("hlist_nulls_node", &["next"]),
        ("hlist_nulls_node", &["pprev"]),
        ("nf_conntrack_tuple_hash", &["tuple", "dst", "dir"]),
        ("nf_conn", &["status"]),
        ("nf_conn", &["ct_net", "net"]),
        ("nf_conntrack_tuple_hash", &["tuple"]),
        ("nf_conntrack_tuple", &["src", "u3"]),
        ("nf_conntrack_tuple", &["src", "l3num"]),
        ("nf_conntrack_tuple", &["dst", "protonum"]),
        ("nf_conn", &["timeout"]),
        ("nf_conn", &["proto", "tcp", "state"]),
        ("nf_conn", &["ext"]),
        ("nf_ct_ext", &["len"]),
    ];
    let btfs: Vec<&Btf> = kb
        .module
        .iter()
        .chain(std::iter::once(&*kb.vmlinux))
        .collect();
    for btf in btfs {
        for (strukt, path) in lookups {
            if let Ok(m) = btf.member_path(strukt, path) {
                let _ = btf.type_size(m.type_id);
                let _ = btf.array(m.type_id);
                let _ = btf.type_name(m.type_id);
                let _ = btf.name(m.name_off);
            }
            let _ = btf.struct_size(strukt);
        }
        let _ = btf.member("sk_buff", "_nfct");
        let _ = btf.member_path("net", &["ns", "inum"]);
    }
    let _ = kb.has_func("__nf_conntrack_hash_insert");
    let _ = kb.offsets();
}

/// Bytes after the 12-byte header of a BTF type record (btf.rst, v6.1);
/// `None` for a kind this does not know.
fn body_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,
        3 => 12,
        4 | 5 | 15 | 19 => 12 * vlen,
        6 | 13 => 8 * vlen,
        2 | 7..=12 | 16 | 18 => 0,
        _ => return None,
    })
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}

fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut d = vec![0x9f, 0xeb, 1, 0];
    let (t, s) = (types.len() as u32, strings.len() as u32);
    for v in [24u32, 0, t, t, s] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d.extend_from_slice(types);
    d.extend_from_slice(strings);
    d
}

/// Cuts a vmlinux BTF before `struct nf_conn` (or in the middle, if it has
/// none) into `(base, split)`: the base keeps the types before the cut and
/// every string; the split continues the base's type ids and has a string
/// section of its own (one empty string), exactly as a module's split BTF
/// continues vmlinux. Deterministic, so the fuzz target rebuilds the same base.
pub fn slice_vmlinux(v: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let hdr = u32_at(v, 4)? as usize;
    let types = v.get(hdr + u32_at(v, 8)? as usize..)?;
    let types = types.get(..u32_at(v, 12)? as usize)?;
    let str_start = hdr + u32_at(v, 16)? as usize;
    let strings = v.get(str_start..str_start + u32_at(v, 20)? as usize)?;
    let mut starts = Vec::new();
    let mut cut = None;
    let mut off = 0;
    while off < types.len() {
        let info = u32_at(types, off + 4)?;
        let kind = (info >> 24) & 0x1f;
        if kind == 4 && cut.is_none() {
            let name = strings.get(u32_at(types, off)? as usize..)?;
            if name.starts_with(b"nf_conn\0") {
                cut = Some(starts.len());
            }
        }
        starts.push(off);
        off += 12 + body_len(kind, (info & 0xffff) as usize)?;
    }
    let cut = cut.unwrap_or(starts.len() / 2);
    let at = *starts.get(cut)?;
    Some((blob(&types[..at], strings), blob(&types[at..], b"\0")))
}

/// The base a split-BTF input continues: this host's vmlinux, trimmed by
/// [`trim_vmlinux`] and cut by [`slice_vmlinux`], else a one-type stand-in (a host without BTF still
/// fuzzes the split parser, against a small base).
pub fn split_base() -> Arc<Btf> {
    let sliced = std::fs::read(VMLINUX_BTF)
        .ok()
        .and_then(|v| trim_vmlinux(&v))
        .and_then(|v| slice_vmlinux(&v))
        .and_then(|(base, _)| Btf::parse(base, None).ok());
    Arc::new(sliced.unwrap_or_else(|| {
        // [1] int, size 4.
        let mut t = Vec::new();
        for v in [1u32, 1 << 24, 4, 32] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        match Btf::parse(blob(&t, b"\0int\0"), None) {
            Ok(b) => b,
            Err(e) => panic!("the stand-in base BTF must parse: {e}"),
        }
    }))
}

/// Builds a BTF blob type by type: ids from `first_id`, string offsets from
/// `first_str` (both 1 and 0 for a vmlinux, the base's ends for a split).
struct Builder {
    first_id: u32,
    first_str: u32,
    types: Vec<u8>,
    count: u32,
    strings: Vec<u8>,
}

impl Builder {
    fn new(first_id: u32, first_str: u32) -> Builder {
        Builder {
            first_id,
            first_str,
            types: Vec::new(),
            count: 0,
            strings: vec![0],
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.first_str + self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn push(&mut self, words: &[u32]) -> u32 {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.count += 1;
        self.first_id + self.count - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        let n = self.name(name);
        self.push(&[n, 1 << 24, size, size * 8])
    }

    fn ptr(&mut self) -> u32 {
        self.push(&[0, 2 << 24, 0])
    }

    /// A struct (kind 4) or union (5) of `(name, type, bit offset)`.
    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let n = self.name(name);
        let mut w = vec![n, (kind << 24) | members.len() as u32, size];
        for (m, ty, off) in members {
            let mn = self.name(m);
            w.extend([mn, *ty, *off]);
        }
        self.push(&w)
    }

    fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        self.push(&[0, 3 << 24, 0, elem, index, n])
    }

    fn finish(self) -> Vec<u8> {
        blob(&self.types, &self.strings)
    }
}

/// A small BTF holding every struct and member ctscope looks up, laid out as
/// in Linux 6.1 (include/net/netfilter/nf_conntrack.h and _tuple.h,
/// include/linux/skbuff.h, include/net/net_namespace.h): a seed that reaches
/// the end of `KernelBtf::offsets` in microseconds, where vmlinux takes tens
/// of milliseconds per input.
pub fn mini_btf(first_id: u32, first_str: u32) -> Vec<u8> {
    let mut b = Builder::new(first_id, first_str);
    let int = b.int("int", 4);
    let u8_ = b.int("u8", 1);
    let u16_ = b.int("u16", 2);
    let u32_ = b.int("u32", 4);
    let ulong = b.int("long unsigned int", 8);
    let ptr = b.ptr();
    let hnn = b.composite(
        4,
        "hlist_nulls_node",
        16,
        &[("next", ptr, 0), ("pprev", ptr, 64)],
    );
    let addr = b.composite(5, "nf_inet_addr", 16, &[("all", u32_, 0), ("ip", u32_, 0)]);
    let man = b.composite(
        4,
        "nf_conntrack_man",
        20,
        &[("u3", addr, 0), ("l3num", u16_, 144)],
    );
    let dst = b.composite(
        4,
        "",
        20,
        &[("u3", addr, 0), ("protonum", u8_, 144), ("dir", u8_, 152)],
    );
    let tuple = b.composite(
        4,
        "nf_conntrack_tuple",
        40,
        &[("src", man, 0), ("dst", dst, 160)],
    );
    let th = b.composite(
        4,
        "nf_conntrack_tuple_hash",
        56,
        &[("hnnode", hnn, 0), ("tuple", tuple, 128)],
    );
    let ths = b.array(th, int, 2);
    let pnet = b.composite(4, "possible_net_t", 8, &[("net", ptr, 0)]);
    let tcp = b.composite(4, "ip_ct_tcp", 60, &[("state", u8_, 416)]);
    let proto = b.composite(5, "nf_conntrack_proto", 60, &[("tcp", tcp, 0)]);
    let anon = b.composite(5, "", 8, &[("timeout", u32_, 0), ("lock", u32_, 0)]);
    b.composite(
        4,
        "nf_conn",
        256,
        &[
            ("ct_general", u32_, 0),
            ("", anon, 32),
            ("tuplehash", ths, 128),
            ("status", ulong, 1024),
            ("ct_net", pnet, 1088),
            ("ext", ptr, 1216),
            ("proto", proto, 1280),
        ],
    );
    b.composite(4, "nf_ct_ext", 8, &[("offset", u8_, 0), ("len", u8_, 8)]);
    let nfct = b.composite(5, "", 8, &[("_nfct", ulong, 0)]);
    b.composite(4, "sk_buff", 232, &[("len", u32_, 0), ("", nfct, 832)]);
    let ns = b.composite(
        4,
        "ns_common",
        24,
        &[("stashed", ptr, 0), ("inum", u32_, 128)],
    );
    b.composite(4, "net", 64, &[("passive", u32_, 0), ("ns", ns, 64)]);
    let f = b.name("__nf_conntrack_hash_insert");
    b.push(&[f, 12 << 24, 0]);
    b.finish()
}

/// Structs and functions ctscope looks up: the roots [`trim_vmlinux`] keeps.
const ROOTS: &[&str] = &[
    "nf_conn",
    "nf_conntrack_tuple_hash",
    "hlist_nulls_node",
    "nf_conntrack_tuple",
    "nf_ct_ext",
    "sk_buff",
    "net",
    "__nf_conntrack_hash_insert",
];

/// Where the type ids and the name offsets sit in one record (btf.rst, v6.1).
fn refs(kind: u32, vlen: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut ids, mut names) = (Vec::new(), vec![0]);
    match kind {
        // Pointers are kept but not followed (see trim_vmlinux).
        8..=12 | 14 | 17 | 18 => ids.push(8),
        3 => ids.extend([12, 16]),
        4 | 5 => (0..vlen).for_each(|i| {
            names.push(12 + i * 12);
            ids.push(12 + i * 12 + 4);
        }),
        6 => names.extend((0..vlen).map(|i| 12 + i * 8)),
        19 => names.extend((0..vlen).map(|i| 12 + i * 12)),
        13 => {
            ids.push(8);
            (0..vlen).for_each(|i| {
                names.push(12 + i * 8);
                ids.push(12 + i * 8 + 4);
            });
        }
        15 => ids.extend((0..vlen).map(|i| 12 + i * 12)),
        _ => {}
    }
    (ids, names)
}

/// A real vmlinux BTF cut down to the types ctscope's lookups reach from
/// [`ROOTS`] by value (pointers become `void *`: following them would keep
/// most of the kernel), renumbered, with only their names: tens of KiB that
/// describe this host's `struct nf_conn`, `sk_buff` and `net` exactly as the
/// full file does, and parse a hundred times faster.
pub fn trim_vmlinux(v: &[u8]) -> Option<Vec<u8>> {
    let hdr = u32_at(v, 4)? as usize;
    let types = v.get(hdr + u32_at(v, 8)? as usize..)?;
    let types = types.get(..u32_at(v, 12)? as usize)?;
    let str_start = hdr + u32_at(v, 16)? as usize;
    let strings = v.get(str_start..str_start + u32_at(v, 20)? as usize)?;
    let name = |off: u32| -> &[u8] {
        let s = strings.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    // Record extents, by id - 1.
    let mut recs = Vec::new();
    let mut off = 0;
    while off < types.len() {
        let info = u32_at(types, off + 4)?;
        let len = 12 + body_len((info >> 24) & 0x1f, (info & 0xffff) as usize)?;
        recs.push(off..off + len);
        off += len;
    }
    let rec = |id: u32| types.get(recs.get(id.checked_sub(1)? as usize)?.clone());
    let kind_vlen = |r: &[u8]| {
        let info = u32_at(r, 4).unwrap_or(0);
        ((info >> 24) & 0x1f, (info & 0xffff) as usize)
    };
    // Every root of kind struct or func, then what they hold by value.
    let mut keep = std::collections::BTreeSet::new();
    let mut todo: Vec<u32> = (1..=recs.len() as u32)
        .filter(|&id| {
            rec(id).is_some_and(|r| {
                matches!(kind_vlen(r).0, 4 | 12)
                    && ROOTS
                        .iter()
                        .any(|n| name(u32_at(r, 0).unwrap_or(0)) == n.as_bytes())
            })
        })
        .collect();
    while let Some(id) = todo.pop() {
        if id == 0 || !keep.insert(id) {
            continue;
        }
        let r = rec(id)?;
        let (kind, vlen) = kind_vlen(r);
        // A function's prototype is not read by ctscope: keep FUNC alone.
        if kind == 12 {
            continue;
        }
        for at in refs(kind, vlen).0 {
            todo.push(u32_at(r, at)?);
        }
    }
    let new_id = |old: u32| -> u32 {
        if old == 0 {
            return 0;
        }
        keep.range(..old).count() as u32 + 1
    };
    let mut out_types = Vec::new();
    let mut out_strings = vec![0u8];
    for &id in &keep {
        let mut r = rec(id)?.to_vec();
        let (kind, vlen) = kind_vlen(&r);
        let (ids, names) = refs(kind, vlen);
        for at in ids {
            let old = u32_at(&r, at)?;
            let new = if keep.contains(&old) { new_id(old) } else { 0 };
            r[at..at + 4].copy_from_slice(&new.to_le_bytes());
        }
        if kind == 2 || kind == 12 {
            // `void *`; a FUNC's prototype dropped.
            r[8..12].copy_from_slice(&0u32.to_le_bytes());
        }
        for at in names {
            let n = name(u32_at(&r, at)?);
            let new = if n.is_empty() {
                0
            } else {
                let o = out_strings.len() as u32;
                out_strings.extend_from_slice(n);
                out_strings.push(0);
                o
            };
            r[at..at + 4].copy_from_slice(&new.to_le_bytes());
        }
        out_types.extend_from_slice(&r);
    }
    Some(blob(&out_types, &out_strings))
}
