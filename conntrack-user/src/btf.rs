//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux` and a
//! module's split BTF such as `/sys/kernel/btf/nf_conntrack`), enough to find
//! struct member offsets, type sizes and function names.
//!
//! aya-obj 0.3 cannot parse split (module) BTF on top of vmlinux, and on most
//! distributions nf_conntrack is a module, so ctscope reads BTF itself. Format:
//! Documentation/bpf/btf.rst (v6.1); split BTF continues the type ids and the
//! string offsets of its base.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

const BTF_MAGIC: u16 = 0xeb9f;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("type {0} has no size")]
    NoSize(u32),
}

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Kind {
    Int {
        size: u32,
    },
    Ptr,
    Array {
        elem: u32,
        nelems: u32,
    },
    Struct {
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
    },
    /// typedef, volatile, const, restrict, type tag: all refer to another type.
    Alias {
        target: u32,
    },
    Func,
    Float {
        size: u32,
    },
    Other,
}

#[derive(Debug, Clone)]
struct Type {
    name: String,
    kind: Kind,
}

/// Parsed BTF: types indexed by id (id 0 is `void`).
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
    funcs: HashMap<String, u32>,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16, BtfError> {
    d.get(off..off + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

impl Btf {
    /// Reads a BTF file; `base` must be given for split BTF (kernel modules).
    pub fn from_file(path: &Path, base: Option<&Btf>) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(&data, base)
    }

    pub fn parse(data: &[u8], base: Option<&Btf>) -> Result<Btf, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian or not BTF)".into(),
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let str_start = hdr_len + str_off;
        let own_strings = data
            .get(str_start..str_start + str_len)
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?;

        // Split BTF: ids and string offsets continue those of the base, so
        // concatenating keeps every offset valid as it is.
        let (mut types, mut strings) = match base {
            Some(b) => (b.types.clone(), b.strings.clone()),
            None => (
                vec![Type {
                    name: String::new(),
                    kind: Kind::Other,
                }],
                Vec::new(),
            ),
        };
        strings.extend_from_slice(own_strings);
        let first_new = types.len();

        let mut off = hdr_len + type_off;
        let end = off + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds".into()));
        }
        while off < end {
            let name_off = u32_at(data, off)?;
            let info = u32_at(data, off + 4)?;
            let size_or_type = u32_at(data, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind = match (info >> 24) & 0x1f {
                1 => {
                    off += 4;
                    Kind::Int { size: size_or_type }
                }
                2 => Kind::Ptr,
                3 => {
                    let elem = u32_at(data, off)?;
                    let nelems = u32_at(data, off + 8)?;
                    off += 12;
                    Kind::Array { elem, nelems }
                }
                k @ (4 | 5) => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(data, off)?;
                        let m_type = u32_at(data, off + 4)?;
                        let m_off = u32_at(data, off + 8)?;
                        off += 12;
                        members.push(Member {
                            name: str_at(&strings, m_name),
                            type_id: m_type,
                            // With kind_flag the top 8 bits hold the bitfield size.
                            bit_offset: if kind_flag {
                                m_off & 0x00ff_ffff
                            } else {
                                m_off
                            },
                        });
                    }
                    if k == 4 {
                        Kind::Struct {
                            size: size_or_type,
                            members,
                        }
                    } else {
                        Kind::Union {
                            size: size_or_type,
                            members,
                        }
                    }
                }
                6 => {
                    off += 8 * vlen;
                    Kind::Enum { size: size_or_type }
                }
                7 => Kind::Other,
                8..=11 | 18 => Kind::Alias {
                    target: size_or_type,
                },
                12 => Kind::Func,
                13 => {
                    off += 8 * vlen;
                    Kind::Other
                }
                14 | 17 => {
                    off += 4;
                    Kind::Other
                }
                15 => {
                    off += 12 * vlen;
                    Kind::Other
                }
                16 => Kind::Float { size: size_or_type },
                19 => {
                    off += 12 * vlen;
                    Kind::Enum { size: size_or_type }
                }
                k => {
                    return Err(BtfError::Malformed(format!(
                        "unknown BTF kind {k} at byte {}",
                        off - 12
                    )));
                }
            };
            types.push(Type {
                name: str_at(&strings, name_off),
                kind,
            });
        }

        let mut structs = base.map(|b| b.structs.clone()).unwrap_or_default();
        let mut funcs = base.map(|b| b.funcs.clone()).unwrap_or_default();
        for (id, t) in types.iter().enumerate().skip(first_new) {
            match &t.kind {
                // A module's own definition wins over a base one of the same name.
                Kind::Struct { .. } if !t.name.is_empty() => {
                    structs.insert(t.name.clone(), id as u32);
                }
                Kind::Func => {
                    funcs.entry(t.name.clone()).or_insert(id as u32);
                }
                _ => {}
            }
        }
        Ok(Btf {
            types,
            strings,
            structs,
            funcs,
        })
    }

    /// Number of types, `void` included (the next split BTF starts here).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    pub fn has_func(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    fn struct_members(&self, name: &str) -> Result<(u32, &[Member]), BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        match &self.types[id as usize].kind {
            Kind::Struct { size, members } => Ok((*size, members)),
            _ => Err(BtfError::NoStruct(name.to_string())),
        }
    }

    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        self.struct_members(name).map(|(s, _)| s)
    }

    /// A member of a struct, looking into anonymous struct/union members the
    /// way C does (e.g. `sk_buff._nfct` sits in an anonymous union on some
    /// kernels). The returned offset is relative to the outer struct.
    pub fn member(&self, strukt: &str, member: &str) -> Result<Member, BtfError> {
        let (_, members) = self.struct_members(strukt)?;
        self.find_member(members, member, 0, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    /// Offset (bits) of a member path such as `tuple.dst.dir` inside a struct,
    /// following named members of struct and union types along the way.
    pub fn member_path(&self, strukt: &str, path: &[&str]) -> Result<Member, BtfError> {
        let no_member = |m: &str| BtfError::NoMember {
            strukt: strukt.to_string(),
            member: m.to_string(),
        };
        let (first, rest) = path.split_first().ok_or_else(|| no_member(""))?;
        let mut cur = self.member(strukt, first)?;
        for name in rest {
            let inner = match self
                .types
                .get(self.resolve(cur.type_id) as usize)
                .map(|t| &t.kind)
            {
                Some(Kind::Struct { members, .. } | Kind::Union { members, .. }) => members,
                _ => return Err(no_member(name)),
            };
            let m = self
                .find_member(inner, name, 0, 0)
                .ok_or_else(|| no_member(name))?;
            cur = Member {
                bit_offset: cur.bit_offset + m.bit_offset,
                ..m
            };
        }
        Ok(cur)
    }

    fn find_member(&self, members: &[Member], name: &str, base: u32, depth: u32) -> Option<Member> {
        if depth > 8 {
            return None;
        }
        for m in members {
            if m.name == name {
                return Some(Member {
                    bit_offset: base + m.bit_offset,
                    ..m.clone()
                });
            }
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            let inner = match &self.types.get(self.resolve(m.type_id) as usize)?.kind {
                Kind::Struct { members, .. } | Kind::Union { members, .. } => members,
                _ => continue,
            };
            if let Some(found) = self.find_member(inner, name, base + m.bit_offset, depth + 1) {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| &t.kind) {
                Some(Kind::Alias { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type.
    pub fn type_size(&self, id: u32) -> Result<u32, BtfError> {
        let rid = self.resolve(id);
        match self.types.get(rid as usize).map(|t| &t.kind) {
            Some(
                Kind::Int { size }
                | Kind::Struct { size, .. }
                | Kind::Union { size, .. }
                | Kind::Enum { size }
                | Kind::Float { size },
            ) => Ok(*size),
            Some(Kind::Ptr) => Ok(8),
            Some(Kind::Array { elem, nelems }) => Ok(self.type_size(*elem)? * nelems),
            _ => Err(BtfError::NoSize(id)),
        }
    }

    /// Element type and count when `id` is an array.
    pub fn array(&self, id: u32) -> Option<(u32, u32)> {
        match self.types.get(self.resolve(id) as usize).map(|t| &t.kind) {
            Some(Kind::Array { elem, nelems }) => Some((*elem, *nelems)),
            _ => None,
        }
    }

    /// Name of a type after resolving typedefs and qualifiers.
    pub fn type_name(&self, id: u32) -> &str {
        self.types
            .get(self.resolve(id) as usize)
            .map(|t| t.name.as_str())
            .unwrap_or("")
    }

    #[cfg(test)]
    fn string_table_len(&self) -> usize {
        self.strings.len()
    }
}

fn str_at(strings: &[u8], off: u32) -> String {
    let tail = strings.get(off as usize..).unwrap_or(&[]);
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob by hand: int, struct with an anonymous union.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0";
        // name offsets: int=1 outer=5 a=11 b=13 c=15
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] int, size 4
        push(1);
        push(1 << 24);
        push(4);
        push(32);
        // [2] anonymous union { int c; } size 4
        push(0);
        push((5 << 24) | 1);
        push(4);
        push(15);
        push(1);
        push(0);
        // [3] struct outer { int a; int b; union {int c}; } size 12
        push(5);
        push((4 << 24) | 3);
        push(12);
        push(11);
        push(1);
        push(0);
        push(13);
        push(1);
        push(32);
        push(0);
        push(2);
        push(64);
        assemble(&types, strings)
    }

    /// A BTF blob: header, type section, string section.
    fn assemble(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        d.extend_from_slice(&[1, 0]);
        let (t, st) = (types.len() as u32, strings.len() as u32);
        for v in [24u32, 0, t, t, st] {
            d.extend_from_slice(&v.to_le_bytes());
        }
        d.extend_from_slice(types);
        d.extend_from_slice(strings);
        d
    }

    #[test]
    fn parses_members_sizes_and_anonymous_unions() {
        let btf = Btf::parse(&blob(), None).expect("parse");
        assert_eq!(btf.struct_size("outer").expect("size"), 12);
        assert_eq!(btf.member("outer", "b").expect("b").bit_offset, 32);
        assert_eq!(btf.member("outer", "c").expect("c").bit_offset, 64);
        assert!(btf.member("outer", "zz").is_err());
        // Through the anonymous union, by path.
        assert_eq!(btf.member_path("outer", &["c"]).expect("c").bit_offset, 64);
        assert!(btf.member_path("outer", &["a", "x"]).is_err());
        assert!(btf.struct_size("nope").is_err());
    }

    #[test]
    fn split_btf_continues_ids_and_strings() {
        let base = Btf::parse(&blob(), None).expect("parse");
        let base_strings = base.string_table_len() as u32;
        // A module struct `modst { int x (base type 1); outer y (base type 3); }`
        // with its own strings, which split BTF numbers after the base's.
        let strings = b"\0modst\0x\0y\0";
        let (modst, x, y) = (base_strings + 1, base_strings + 7, base_strings + 9);
        let mut types = Vec::new();
        for v in [modst, (4 << 24) | 2, 16, x, 1, 0, y, 3, 32] {
            types.extend_from_slice(&v.to_le_bytes());
        }
        let split = Btf::parse(&assemble(&types, strings), Some(&base)).expect("split");
        assert_eq!(split.type_count(), base.type_count() + 1);
        assert_eq!(split.struct_size("modst").expect("module struct"), 16);
        // A member typed by a base struct resolves through the base, by path.
        assert_eq!(
            split
                .member_path("modst", &["y", "b"])
                .expect("y.b")
                .bit_offset,
            64
        );
        assert_eq!(split.member("modst", "x").expect("x").type_id, 1);
        // Base structs stay visible.
        assert_eq!(split.struct_size("outer").expect("base struct"), 12);
    }

    #[test]
    fn bitfield_offsets_drop_the_size_byte() {
        let mut b = blob();
        // Set kind_flag on `outer` (type 3) and give member b a bitfield size.
        let t3 = 24 + 16 + 24; // header, int, union
        let info = u32::from_le_bytes([b[t3 + 4], b[t3 + 5], b[t3 + 6], b[t3 + 7]]) | (1 << 31);
        b[t3 + 4..t3 + 8].copy_from_slice(&info.to_le_bytes());
        let b_off = t3 + 12 + 12 + 8;
        b[b_off..b_off + 4].copy_from_slice(&((3u32 << 24) | 32).to_le_bytes());
        let btf = Btf::parse(&b, None).expect("parse");
        assert_eq!(btf.member("outer", "b").expect("b").bit_offset, 32);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[0u8; 4], None).is_err());
        let mut b = blob();
        b.truncate(30);
        assert!(Btf::parse(&b, None).is_err());
    }
}
