//! Struct offsets the eBPF programs need, read from the running kernel's BTF.
//!
//! Where nf_conntrack is a module (every distro kernel), `struct nf_conn` is in
//! the module's split BTF (`/sys/kernel/btf/nf_conntrack`, 5.11+). Where it is
//! built in, it is in vmlinux BTF. Debian's 5.10 has no module BTF but its
//! vmlinux BTF describes `struct nf_conn` (built-in code includes the header);
//! the same kernel build means the same layout, and every walk then proves it
//! at run time: a walk must end at the nulls marker of its own bucket, and a
//! mismatch is counted and reported instead of a length.

use std::{path::Path, sync::Arc};

use serde::Serialize;
use thiserror::Error;

use crate::host::btf::{Btf, BtfError};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const MODULE_BTF: &str = "/sys/kernel/btf/nf_conntrack";

#[derive(Debug, Error)]
pub enum OffsetsError {
    #[error("{VMLINUX_BTF} is missing: this kernel was built without CONFIG_DEBUG_INFO_BTF")]
    NoVmlinuxBtf,
    #[error(
        "no BTF describes struct nf_conn (neither {MODULE_BTF} nor vmlinux): refusing to guess offsets"
    )]
    NoNfConn,
    #[error("struct nf_conn.tuplehash is not an array of 2 nf_conntrack_tuple_hash (found {0})")]
    UnexpectedTuplehash(String),
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// Where the layout of `struct nf_conn` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NfConnSource {
    /// The nf_conntrack module's split BTF.
    ModuleBtf,
    /// vmlinux BTF (conntrack built in, or a kernel without module BTF).
    Vmlinux,
}

#[derive(Debug, Clone, Serialize)]
pub struct Offsets {
    pub source: NfConnSource,
    pub nf_conn_size: u32,
    pub off_tuplehash: u32,
    pub tuplehash_size: u32,
    pub off_hnnode: u32,
    pub off_next: u32,
    pub off_pprev: u32,
    /// `tuple.dst.dir` inside `struct nf_conntrack_tuple_hash`.
    pub off_tuple_dir: u32,
    pub off_status: u32,
    pub off_skb_nfct: u32,
    /// `nf_conn.ct_net.net`: the entry's namespace (attribution).
    pub off_ct_net: u32,
    /// `net.ns.inum` (vmlinux BTF).
    pub off_net_inum: u32,
    /// `nf_conntrack_tuple_hash.tuple`.
    pub off_th_tuple: u32,
    /// `nf_conntrack_tuple.src.u3`, `.src.l3num`, `.dst.protonum`.
    pub off_tuple_src: u32,
    pub off_tuple_l3num: u32,
    pub off_tuple_protonum: u32,
    /// `nf_conn.timeout` (u32 jiffies) and `nf_conn.proto.tcp.state`.
    pub off_ct_timeout: u32,
    pub off_ct_tcp_state: u32,
    /// `nf_conn.ext` and `nf_ct_ext.len`: what each entry's extension area
    /// costs (0 when BTF does not describe them: not measured).
    #[serde(default)]
    pub off_ct_ext: u32,
    #[serde(default)]
    pub off_ext_len: u32,
}

/// Kernel BTF: vmlinux plus, where present, nf_conntrack's split BTF, which
/// shares vmlinux (its base) instead of holding a copy.
pub struct KernelBtf {
    pub vmlinux: Arc<Btf>,
    pub module: Option<Btf>,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf, OffsetsError> {
        Self::load_from(Path::new(VMLINUX_BTF), Path::new(MODULE_BTF))
    }

    pub fn load_from(vmlinux: &Path, module: &Path) -> Result<KernelBtf, OffsetsError> {
        if !vmlinux.exists() {
            return Err(OffsetsError::NoVmlinuxBtf);
        }
        let vmlinux = Arc::new(Btf::from_file(vmlinux, None)?);
        let module = if module.exists() {
            Some(Btf::from_file(module, Some(Arc::clone(&vmlinux)))?)
        } else {
            None
        };
        Ok(KernelBtf { vmlinux, module })
    }

    /// The BTF that describes `struct nf_conn`, preferring the module's.
    fn nf_conn_btf(&self) -> Option<(&Btf, NfConnSource)> {
        if let Some(m) = &self.module
            && m.has_struct("nf_conn")
        {
            return Some((m, NfConnSource::ModuleBtf));
        }
        self.vmlinux
            .has_struct("nf_conn")
            .then_some((&self.vmlinux, NfConnSource::Vmlinux))
    }

    /// Whether a function is described by BTF (vmlinux or module).
    pub fn has_func(&self, name: &str) -> bool {
        self.module.as_ref().is_some_and(|m| m.has_func(name)) || self.vmlinux.has_func(name)
    }

    pub fn offsets(&self) -> Result<Offsets, OffsetsError> {
        let (btf, source) = self.nf_conn_btf().ok_or(OffsetsError::NoNfConn)?;
        let tuplehash = btf.member("nf_conn", "tuplehash")?;
        let (elem, nelems) = btf.array(tuplehash.type_id).ok_or_else(|| {
            OffsetsError::UnexpectedTuplehash(btf.type_name(tuplehash.type_id).to_string())
        })?;
        if nelems != 2 || btf.type_name(elem) != "nf_conntrack_tuple_hash" {
            return Err(OffsetsError::UnexpectedTuplehash(format!(
                "{}[{nelems}]",
                btf.type_name(elem)
            )));
        }
        let hnnode = btf.member("nf_conntrack_tuple_hash", "hnnode")?;
        let next = btf.member("hlist_nulls_node", "next")?;
        let pprev = btf.member("hlist_nulls_node", "pprev")?;
        let dir = btf.member_path("nf_conntrack_tuple_hash", &["tuple", "dst", "dir"])?;
        let status = btf.member("nf_conn", "status")?;
        let nfct = self.vmlinux.member("sk_buff", "_nfct")?;
        let bytes = |m: crate::host::btf::Member| m.bit_offset / 8;
        // `possible_net_t` holds `struct net *net` only with CONFIG_NET_NS
        // (include/net/net_namespace.h): without it, attribution is not possible.
        let ct_net = btf.member_path("nf_conn", &["ct_net", "net"])?;
        let inum = self.vmlinux.member_path("net", &["ns", "inum"])?;
        let th_tuple = btf.member("nf_conntrack_tuple_hash", "tuple")?;
        let src = btf.member_path("nf_conntrack_tuple", &["src", "u3"])?;
        let l3num = btf.member_path("nf_conntrack_tuple", &["src", "l3num"])?;
        let protonum = btf.member_path("nf_conntrack_tuple", &["dst", "protonum"])?;
        let timeout = btf.member("nf_conn", "timeout")?;
        let tcp_state = btf.member_path("nf_conn", &["proto", "tcp", "state"])?;
        // Optional: memory accounting only, never a walk.
        let (off_ct_ext, off_ext_len) =
            match (btf.member("nf_conn", "ext"), btf.member("nf_ct_ext", "len")) {
                (Ok(e), Ok(l)) => (bytes(e), bytes(l)),
                _ => (0, 0),
            };
        Ok(Offsets {
            source,
            nf_conn_size: btf.struct_size("nf_conn")?,
            off_tuplehash: tuplehash.bit_offset / 8,
            tuplehash_size: btf.type_size(elem)?,
            off_hnnode: hnnode.bit_offset / 8,
            off_next: next.bit_offset / 8,
            off_pprev: pprev.bit_offset / 8,
            off_tuple_dir: dir.bit_offset / 8,
            off_status: status.bit_offset / 8,
            off_skb_nfct: nfct.bit_offset / 8,
            off_ct_net: bytes(ct_net),
            off_net_inum: bytes(inum),
            off_th_tuple: bytes(th_tuple),
            off_tuple_src: bytes(src),
            off_tuple_l3num: bytes(l3num),
            off_tuple_protonum: bytes(protonum),
            off_ct_timeout: bytes(timeout),
            off_ct_tcp_state: bytes(tcp_state),
            off_ct_ext,
            off_ext_len,
        })
    }
}
