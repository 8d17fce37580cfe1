//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux` and a
//! module's split BTF such as `/sys/kernel/btf/nf_conntrack`), enough to find
//! struct member offsets, type sizes and function names.
//!
//! aya-obj 0.3 cannot parse split (module) BTF on top of vmlinux, and on most
//! distributions nf_conntrack is a module, so ctscope reads BTF itself. Format:
//! Documentation/bpf/btf.rst (v6.1); split BTF continues the type ids and the
//! string offsets of its base.
//!
//! Memory matters here (ctscope's whole budget is a few tens of MiB and vmlinux
//! BTF alone is ~5 MiB with ~150k types), so the reader keeps the file's bytes
//! as read plus one `u32` per type (where its record starts) and decodes types,
//! members and names on demand. Nothing is copied into owned strings or
//! per-type vectors, and a split BTF refers to its base instead of copying it.

use std::{collections::HashMap, path::Path, sync::Arc};

use thiserror::Error;

const BTF_MAGIC: u16 = 0xeb9f;

/// Size of `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FLOAT: u32 = 16;
const KIND_ENUM64: u32 = 19;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of the name in the string section (split BTF numbering: see
    /// [`Btf::name`]); 0 (the empty string) for an anonymous member.
    pub name_off: u32,
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
}

/// Parsed BTF: the raw bytes of one BTF file and where each of its types
/// starts. Type ids and string offsets below those of this file belong to the
/// base (split BTF only); id 0 is `void`.
#[derive(Debug)]
pub struct Btf {
    /// The base of a split BTF (vmlinux for a module), shared, not copied.
    base: Option<Arc<Btf>>,
    /// The whole file as read.
    data: Vec<u8>,
    /// Byte offset in `data` of each own type's record, in id order.
    type_at: Vec<u32>,
    /// Id of the first own type: 1 without a base (0 is `void`), else the
    /// base's type count.
    first_id: u32,
    /// Where the own string section lies in `data`.
    str_start: usize,
    str_len: usize,
    /// String offset at which the own string section starts: 0 without a
    /// base, else the end of the base's strings.
    first_str: u32,
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

/// Largest BTF file read: vmlinux BTF is 5-6 MiB on distribution kernels
/// (Debian 6.12: 5.9 MiB), modules' a few KiB.
const MAX_FILE: u64 = 64 << 20;

/// Deepest nesting of anonymous struct/union members a lookup follows.
const MAX_ANON_DEPTH: u32 = 8;

/// An outer member's offset plus an inner one's, in bits: member offsets come
/// from the file, so their sum may not fit (a crafted BTF, not a kernel's).
fn offset_sum(outer: u32, inner: u32) -> Result<u32, BtfError> {
    outer.checked_add(inner).ok_or_else(|| {
        BtfError::Malformed(format!(
            "member offset {outer} + {inner} bits overflows 32 bits"
        ))
    })
}

/// Reads a field of a record whose bounds `Btf::parse` already checked; the
/// fallback only keeps a logic error from becoming a panic.
fn field(d: &[u8], off: usize) -> u32 {
    u32_at(d, off).unwrap_or(0)
}

/// One type record, decoded on demand from the bytes of the BTF that holds it.
#[derive(Clone, Copy)]
struct TypeRef<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> TypeRef<'a> {
    fn name_off(self) -> u32 {
        field(self.data, self.at)
    }

    fn info(self) -> u32 {
        field(self.data, self.at + 4)
    }

    fn kind(self) -> u32 {
        (self.info() >> 24) & 0x1f
    }

    /// `size` or `type`, depending on the kind.
    fn size_or_type(self) -> u32 {
        field(self.data, self.at + 8)
    }

    /// Typedef, volatile, const, restrict and type tag refer to another type.
    fn alias_target(self) -> Option<u32> {
        matches!(self.kind(), 8..=11 | 18).then(|| self.size_or_type())
    }

    /// (element type, element count) of an array.
    fn array(self) -> Option<(u32, u32)> {
        (self.kind() == KIND_ARRAY).then(|| {
            let body = self.at + TYPE_HEADER;
            (field(self.data, body), field(self.data, body + 8))
        })
    }

    fn is_composite(self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }

    /// Members of a struct or union (none for any other kind).
    fn members(self) -> impl Iterator<Item = Member> + 'a {
        let info = self.info();
        let vlen = if self.is_composite() {
            (info & 0xffff) as usize
        } else {
            0
        };
        // With kind_flag the top 8 bits of the offset hold the bitfield size.
        let offset_mask = if info >> 31 == 1 { 0x00ff_ffff } else { !0 };
        let (data, body) = (self.data, self.at + TYPE_HEADER);
        (0..vlen).map(move |i| {
            let m = body + i * 12;
            Member {
                name_off: field(data, m),
                type_id: field(data, m + 4),
                bit_offset: field(data, m + 8) & offset_mask,
            }
        })
    }
}

/// Bytes that follow the 12-byte header of a type of this kind.
fn body_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        KIND_ENUM => 8 * vlen,
        // Pointer, forward declaration, typedef/qualifiers, func, float, type tag.
        2 | 7..=12 | 16 | 18 => 0,
        // Function prototype: (name, type) per parameter.
        13 => 8 * vlen,
        // Variable, declaration tag.
        14 | 17 => 4,
        // Data section: (type, offset, size) per variable.
        15 => 12 * vlen,
        KIND_ENUM64 => 12 * vlen,
        _ => return None,
    })
}

impl Btf {
    /// Reads a BTF file; `base` must be given for split BTF (kernel modules).
    /// At most [`MAX_FILE`] bytes are read: a path that is not sysfs BTF
    /// (a test's, an unusual mount) must not make ctscope read without end.
    pub fn from_file(path: &Path, base: Option<Arc<Btf>>) -> Result<Btf, BtfError> {
        use std::io::Read as _;
        let read_err = |source| BtfError::Read {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        // Sized up front from the file's size (sysfs gives BTF's): growing by
        // doubling would hold the old and the new buffer at once, up to 3x
        // the 5-6 MiB of vmlinux BTF, ctscope's peak memory. One more byte
        // makes the read of a file of exactly that size end without a
        // reallocation; the bound still holds for a file that lies.
        let hint = file.metadata().map_or(0, |m| m.len().min(MAX_FILE));
        let mut data = Vec::with_capacity(usize::try_from(hint).unwrap_or(0).saturating_add(1));
        file.take(MAX_FILE + 1)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        if data.len() as u64 > MAX_FILE {
            return Err(BtfError::Malformed(format!(
                "{} is larger than {} MiB",
                path.display(),
                MAX_FILE >> 20
            )));
        }
        Btf::parse(data, base)
    }

    /// Indexes a BTF blob, keeping it as it is; `base` is the BTF a split BTF
    /// continues.
    pub fn parse(data: Vec<u8>, base: Option<Arc<Btf>>) -> Result<Btf, BtfError> {
        if u16_at(&data, 0)? != BTF_MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian or not BTF)".into(),
            ));
        }
        // Record offsets are kept as u32; sysfs BTF is a few MiB at most.
        if u32::try_from(data.len()).is_err() {
            return Err(BtfError::Malformed("larger than 4 GiB".into()));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        // Header fields are u32s: their sums fit a 64-bit usize, not a 32-bit one.
        let str_start = hdr_len
            .checked_add(str_off)
            .filter(|s| s.checked_add(str_len).is_some_and(|e| e <= data.len()))
            .ok_or_else(|| BtfError::Malformed("string section out of bounds".into()))?;
        let mut off = hdr_len
            .checked_add(type_off)
            .ok_or_else(|| BtfError::Malformed("type section out of bounds".into()))?;
        let end = off
            .checked_add(type_len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| BtfError::Malformed("type section out of bounds".into()))?;

        // Split BTF: ids and string offsets continue those of the base.
        let (first_id, first_str) = match &base {
            Some(b) => (b.type_count(), b.strings_end()),
            None => (1, 0),
        };
        // Every later string offset is compared with this end: it must fit.
        if first_str.checked_add(str_len as u32).is_none() {
            return Err(BtfError::Malformed("string sections end past 4 GiB".into()));
        }
        let mut type_at = Vec::new();
        while off < end {
            let info = u32_at(&data, off + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let body = body_len(kind, vlen).ok_or_else(|| {
                BtfError::Malformed(format!("unknown BTF kind {kind} at byte {off}"))
            })?;
            let next = off + TYPE_HEADER + body;
            // Every later read of this record relies on this check.
            if next > end {
                return Err(BtfError::Malformed(format!("truncated at byte {off}")));
            }
            type_at.push(off as u32);
            off = next;
        }
        type_at.shrink_to_fit();
        if u32::try_from(type_at.len())
            .ok()
            .and_then(|n| n.checked_add(first_id))
            .is_none()
        {
            return Err(BtfError::Malformed("too many types".into()));
        }
        Ok(Btf {
            base,
            data,
            type_at,
            first_id,
            str_start,
            str_len,
            first_str,
        })
    }

    /// Number of types, `void` and the base's included (the next split BTF
    /// starts here).
    pub fn type_count(&self) -> u32 {
        self.first_id + self.type_at.len() as u32
    }

    /// Types this file itself describes (not its base's, not `void`).
    pub fn own_type_count(&self) -> usize {
        self.type_at.len()
    }

    /// The BTF this split BTF continues.
    pub fn base(&self) -> Option<&Arc<Btf>> {
        self.base.as_ref()
    }

    /// One past the last string offset (the next split BTF's strings start here).
    pub fn strings_end(&self) -> u32 {
        self.first_str + self.str_len as u32
    }

    /// The type with this id, in this file or its base; `None` for `void` and
    /// unknown ids.
    fn ty(&self, id: u32) -> Option<TypeRef<'_>> {
        if id < self.first_id {
            return self.base.as_ref()?.ty(id);
        }
        let at = *self.type_at.get((id - self.first_id) as usize)?;
        Some(TypeRef {
            data: &self.data,
            at: at as usize,
        })
    }

    /// The NUL-terminated string at offset `off` (split numbering), without
    /// its NUL. Out-of-range offsets read as empty.
    fn str_bytes(&self, off: u32) -> &[u8] {
        if off < self.first_str {
            return self.base.as_ref().map_or(&[], |b| b.str_bytes(off));
        }
        let own = self
            .data
            .get(self.str_start..self.str_start + self.str_len)
            .unwrap_or(&[]);
        let tail = own.get((off - self.first_str) as usize..).unwrap_or(&[]);
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..end]
    }

    /// A name from the string section (e.g. [`Member::name_off`]); empty for
    /// anonymous members or names that are not UTF-8 (kernel names are ASCII).
    pub fn name(&self, off: u32) -> &str {
        std::str::from_utf8(self.str_bytes(off)).unwrap_or("")
    }

    fn name_is(&self, off: u32, name: &str) -> bool {
        self.str_bytes(off) == name.as_bytes()
    }

    /// The last own type of `kind` named `name`, else the base's. Types are
    /// scanned rather than indexed by name: a handful of lookups at start-up
    /// cost a few milliseconds, a name index would cost MiBs for the whole run.
    fn find_named(&self, kind: u32, name: &str) -> Option<TypeRef<'_>> {
        let own = self.type_at.iter().rev().map(|&at| TypeRef {
            data: &self.data,
            at: at as usize,
        });
        // A module's own definition wins over a base one of the same name.
        own.filter(|t| t.kind() == kind)
            .find(|t| self.name_is(t.name_off(), name))
            .or_else(|| self.base.as_ref()?.find_named(kind, name))
    }

    pub fn has_func(&self, name: &str) -> bool {
        !name.is_empty() && self.find_named(KIND_FUNC, name).is_some()
    }

    /// The type id of the FUNC `name` described by this file itself (not its
    /// base): for a module's split BTF an id in the numbering that continues
    /// vmlinux's, which is what `attach_btf_id` takes with that module's BTF
    /// object (kernel/bpf/btf.c, v6.1).
    pub fn own_func_id(&self, name: &str) -> Option<u32> {
        if name.is_empty() {
            return None;
        }
        self.type_at
            .iter()
            .enumerate()
            .rev()
            .find(|(_, at)| {
                let t = TypeRef {
                    data: &self.data,
                    at: **at as usize,
                };
                t.kind() == KIND_FUNC && self.name_is(t.name_off(), name)
            })
            .and_then(|(i, _)| self.first_id.checked_add(u32::try_from(i).ok()?))
    }

    pub fn has_struct(&self, name: &str) -> bool {
        !name.is_empty() && self.find_named(KIND_STRUCT, name).is_some()
    }

    fn find_struct(&self, name: &str) -> Result<TypeRef<'_>, BtfError> {
        self.find_named(KIND_STRUCT, name)
            .filter(|_| !name.is_empty())
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        self.find_struct(name).map(TypeRef::size_or_type)
    }

    /// A member of a struct, looking into anonymous struct/union members the
    /// way C does (e.g. `sk_buff._nfct` sits in an anonymous union on some
    /// kernels). The returned offset is relative to the outer struct.
    pub fn member(&self, strukt: &str, member: &str) -> Result<Member, BtfError> {
        let t = self.find_struct(strukt)?;
        self.find_member(t, member)?
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
            let inner = self
                .ty(self.resolve(cur.type_id))
                .filter(|t| t.is_composite())
                .ok_or_else(|| no_member(name))?;
            let m = self
                .find_member(inner, name)?
                .ok_or_else(|| no_member(name))?;
            cur = Member {
                bit_offset: offset_sum(cur.bit_offset, m.bit_offset)?,
                ..m
            };
        }
        Ok(cur)
    }

    /// `name` among the members of `t` or, as C looks, of its anonymous
    /// struct/union members, depth first; the offset is relative to `t`.
    ///
    /// The BTF is outside input: an anonymous member may name its own struct
    /// (C cannot, a crafted blob can) or many members may share one nested
    /// type. Each type is therefore searched at most once per lookup (a type
    /// already searched without a match cannot match the second time), which
    /// keeps the work linear in the members, and a type met again on its own
    /// path is an error rather than a loop.
    fn find_member(&self, t: TypeRef<'_>, name: &str) -> Result<Option<Member>, BtfError> {
        let mut searched = HashMap::new();
        self.find_member_in(t, name, 0, &mut searched)
    }

    fn find_member_in(
        &self,
        t: TypeRef<'_>,
        name: &str,
        depth: u32,
        // Record (where its BTF's bytes are, where it starts) -> still on the
        // current path.
        searched: &mut HashMap<(usize, usize), bool>,
    ) -> Result<Option<Member>, BtfError> {
        // Kernel structs nest anonymous members a few levels deep (sk_buff:
        // 3 in v6.1); the bound also bounds the recursion's stack.
        if depth > MAX_ANON_DEPTH {
            return Err(BtfError::Malformed(format!(
                "anonymous members nested deeper than {MAX_ANON_DEPTH}"
            )));
        }
        let key = (t.data.as_ptr() as usize, t.at);
        match searched.get(&key) {
            Some(true) => {
                return Err(BtfError::Malformed(format!(
                    "type at byte {} contains itself",
                    t.at
                )));
            }
            Some(false) => return Ok(None),
            None => {}
        }
        if let Some(m) = t.members().find(|m| self.name_is(m.name_off, name)) {
            return Ok(Some(m));
        }
        searched.insert(key, true);
        for m in t
            .members()
            .filter(|m| self.str_bytes(m.name_off).is_empty())
        {
            let Some(inner) = self.ty(self.resolve(m.type_id)) else {
                continue;
            };
            if !inner.is_composite() {
                continue;
            }
            if let Some(found) = self.find_member_in(inner, name, depth + 1, searched)? {
                return Ok(Some(Member {
                    bit_offset: offset_sum(m.bit_offset, found.bit_offset)?,
                    ..found
                }));
            }
        }
        searched.insert(key, false);
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id).and_then(TypeRef::alias_target) {
                Some(target) => id = target,
                None => break,
            }
        }
        id
    }

    /// Size in bytes of a type.
    pub fn type_size(&self, id: u32) -> Result<u32, BtfError> {
        self.type_size_depth(id, 0)
    }

    fn type_size_depth(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        let t = self.ty(self.resolve(id)).ok_or(BtfError::NoSize(id))?;
        match t.kind() {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_FLOAT | KIND_ENUM64 => {
                Ok(t.size_or_type())
            }
            KIND_PTR => Ok(8),
            // Depth-limited: a malformed array of itself must not recurse forever.
            KIND_ARRAY if depth < 32 => {
                let (elem, nelems) = t.array().ok_or(BtfError::NoSize(id))?;
                self.type_size_depth(elem, depth + 1)?
                    .checked_mul(nelems)
                    .ok_or(BtfError::NoSize(id))
            }
            _ => Err(BtfError::NoSize(id)),
        }
    }

    /// Element type and count when `id` is an array.
    pub fn array(&self, id: u32) -> Option<(u32, u32)> {
        self.ty(self.resolve(id))?.array()
    }

    /// Name of a type after resolving typedefs and qualifiers.
    pub fn type_name(&self, id: u32) -> &str {
        self.ty(self.resolve(id))
            .map_or("", |t| self.name(t.name_off()))
    }
}

#[cfg(test)]
mod tests;
