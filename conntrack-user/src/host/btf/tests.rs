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
    let btf = Btf::parse(blob(), None).expect("parse");
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
    let base = Arc::new(Btf::parse(blob(), None).expect("parse"));
    let base_strings = base.strings_end();
    // A module struct `modst { int x (base type 1); outer y (base type 3); }`
    // with its own strings, which split BTF numbers after the base's.
    let strings = b"\0modst\0x\0y\0";
    let (modst, x, y) = (base_strings + 1, base_strings + 7, base_strings + 9);
    let mut types = Vec::new();
    for v in [modst, (4 << 24) | 2, 16, x, 1, 0, y, 3, 32] {
        types.extend_from_slice(&v.to_le_bytes());
    }
    let split = Btf::parse(assemble(&types, strings), Some(Arc::clone(&base))).expect("split");
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
fn split_btf_refers_to_its_base_instead_of_copying_it() {
    let base = Arc::new(Btf::parse(blob(), None).expect("parse"));
    let s = base.strings_end();
    // [4] struct modst { int x; outer y; struct { int a; } (anonymous) }
    // size 20, where `a` reuses the base's string "a" (offset 11) and the
    // anonymous struct is [5], after modst: ids continue from the base's.
    let strings = b"\0modst\0x\0y\0";
    let mut types = Vec::new();
    let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
    for v in [
        s + 1,
        (4 << 24) | 3,
        20,
        s + 7,
        1,
        0,
        s + 9,
        3,
        32,
        0,
        5,
        128,
    ] {
        push(v);
    }
    for v in [0, (4 << 24) | 1, 4, 11, 1, 0] {
        push(v);
    }
    let split = Btf::parse(assemble(&types, strings), Some(Arc::clone(&base))).expect("split");

    // Only the module's own two types and strings are held.
    assert_eq!(split.own_type_count(), 2);
    assert_eq!(split.type_count(), 6);
    assert_eq!(split.strings_end(), s + strings.len() as u32);
    assert!(split.base().is_some_and(|b| Arc::ptr_eq(b, &base)));
    assert_eq!(Arc::strong_count(&base), 2);

    // Its own member, typed by a base type whose name comes from the base.
    let x = split.member("modst", "x").expect("x");
    assert_eq!((x.type_id, x.bit_offset), (1, 0));
    assert_eq!(split.name(x.name_off), "x");
    assert_eq!(split.type_name(x.type_id), "int");
    // A member of a base struct, looked up through the split BTF.
    let b = split.member("outer", "b").expect("outer.b");
    assert_eq!((b.bit_offset, split.name(b.name_off)), (32, "b"));
    assert_eq!(split.member("outer", "c").expect("outer.c").bit_offset, 64);
    // Through an own anonymous struct whose member name is a base string.
    let a = split.member("modst", "a").expect("modst.a");
    assert_eq!((a.bit_offset, a.type_id), (128, 1));
    assert_eq!(split.type_size(4).expect("modst size"), 20);
    assert_eq!(split.type_size(3).expect("outer size"), 12);
    // The base is unchanged and knows nothing of the module.
    assert!(!base.has_struct("modst"));
    assert_eq!(base.type_count(), 4);
    // Ids past the split's own types are nothing.
    assert!(split.type_size(6).is_err());
    assert_eq!(split.type_name(6), "");
}

#[test]
fn funcs_are_found_in_the_split_and_its_base() {
    // Base: [1] int, [2] func "f" (proto omitted: FUNC's type is not read).
    let strings = b"\0int\0f\0";
    let mut types = Vec::new();
    for v in [1u32, 1 << 24, 4, 32, 5, 12 << 24, 0] {
        types.extend_from_slice(&v.to_le_bytes());
    }
    let base = Arc::new(Btf::parse(assemble(&types, strings), None).expect("base"));
    let g = base.strings_end();
    let mut types = Vec::new();
    for v in [g + 1, 12 << 24, 0] {
        types.extend_from_slice(&v.to_le_bytes());
    }
    let split = Btf::parse(assemble(&types, b"\0g\0"), Some(base.clone())).expect("split");
    assert!(split.has_func("f") && split.has_func("g"));
    assert!(base.has_func("f") && !base.has_func("g"));
    assert!(!split.has_func("") && !split.has_func("int"));
    assert!(!split.has_struct("g"));
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
    let btf = Btf::parse(b, None).expect("parse");
    assert_eq!(btf.member("outer", "b").expect("b").bit_offset, 32);
}

/// A split BTF on top of [`blob`] whose own types (ids from 4) are the
/// words `words(s)` returns, `s` being where its strings start: "s" is
/// at `s + 1`, "y" at `s + 3`, "z" at `s + 5`.
fn parse_split(words: impl Fn(u32) -> Vec<u32>) -> Btf {
    let base = Arc::new(Btf::parse(blob(), None).expect("parse"));
    let types: Vec<u8> = words(base.strings_end())
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    Btf::parse(assemble(&types, b"\0s\0y\0z\0"), Some(base)).expect("split")
}

fn is_malformed<T>(r: &Result<T, BtfError>) -> bool {
    matches!(r, Err(BtfError::Malformed(_)))
}

const FAR: u32 = u32::MAX;

#[test]
fn an_overflowing_offset_of_a_direct_match_is_an_error() {
    // [4] struct s { union { int c @1 } @FAR }: the direct match's sum.
    let direct = parse_split(|s| {
        vec![
            s + 1,
            (4 << 24) | 1,
            4,
            0,
            5,
            FAR, //
            0,
            (5 << 24) | 1,
            4,
            15,
            1,
            1,
        ]
    });
    assert!(is_malformed(&direct.member("s", "c")), "direct");
}

#[test]
fn an_overflowing_offset_handed_to_a_nested_member_is_an_error() {
    // [4] struct s { union { struct { int c @0 } @1 } @FAR }: the sum
    // handed to the nested anonymous member.
    let nested = parse_split(|s| {
        vec![
            s + 1,
            (4 << 24) | 1,
            4,
            0,
            5,
            FAR, //
            0,
            (5 << 24) | 1,
            4,
            0,
            6,
            1, //
            0,
            (4 << 24) | 1,
            4,
            15,
            1,
            0,
        ]
    });
    assert!(is_malformed(&nested.member("s", "c")), "nested");
}

#[test]
fn an_overflowing_offset_along_a_member_path_is_an_error() {
    // [4] struct s { struct t y @FAR }, [5] struct t { int z @1 }: the
    // sum along a member path.
    let path = parse_split(|s| {
        vec![
            s + 1,
            (4 << 24) | 1,
            4,
            s + 3,
            5,
            FAR, //
            s + 5,
            (4 << 24) | 1,
            4,
            s + 5,
            1,
            1,
        ]
    });
    assert!(is_malformed(&path.member_path("s", &["y", "z"])), "path");
    // The same shapes at offsets that fit still resolve.
    let fits = parse_split(|s| {
        vec![
            s + 1,
            (4 << 24) | 1,
            4,
            s + 3,
            5,
            FAR - 1, //
            s + 5,
            (4 << 24) | 1,
            4,
            s + 5,
            1,
            1,
        ]
    });
    assert_eq!(
        fits.member_path("s", &["y", "z"]).expect("fits").bit_offset,
        FAR
    );
}

/// Runs `f` on another thread; `None` if it is not done within 10 s
/// (the old search took years on these blobs, so a hang must fail, not
/// stall the test run).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
}

#[test]
fn a_struct_that_contains_itself_is_an_error_found_quickly() {
    // [4] struct s { 64 anonymous members of type struct s }.
    let btf = parse_split(|s| {
        let mut w = vec![s + 1, (4 << 24) | 64, 4];
        for _ in 0..64 {
            w.extend([0, 4, 0]);
        }
        w
    });
    let started = std::time::Instant::now();
    let r = within_10s(move || btf.member("s", "nothere").map(|_| ()))
        .expect("find_member must not take exponential time");
    assert!(is_malformed(&r), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn a_wide_chain_of_anonymous_members_is_searched_once_per_type() {
    // [4] struct s and [5]..[10]: each holds 64 anonymous members of the
    // next; [11] holds `int y`. 64^7 paths, 8 types.
    let btf = parse_split(|s| {
        let mut w = Vec::new();
        for id in 4..11 {
            w.extend([if id == 4 { s + 1 } else { 0 }, (4 << 24) | 64, 4]);
            for _ in 0..64 {
                w.extend([0, id + 1, 0]);
            }
        }
        w.extend([0, (4 << 24) | 1, 4, s + 3, 1, 32]);
        w
    });
    let btf = Arc::new(btf);
    let b = Arc::clone(&btf);
    let r = within_10s(move || b.member("s", "nothere").map(|_| ()))
        .expect("find_member must not take exponential time");
    assert!(matches!(r, Err(BtfError::NoMember { .. })), "{r:?}");
    // And a member at the bottom is found, its offset summed on the way.
    assert_eq!(btf.member("s", "y").expect("y").bit_offset, 32);
}

#[test]
fn a_file_larger_than_the_bound_is_refused_not_read_whole() {
    let dir = std::env::temp_dir().join(format!("ctscope-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("huge");
    let _ = std::fs::remove_file(&path);
    // Sparse: valid magic, then zeros up to one byte past the bound.
    let f = std::fs::File::create_new(&path).expect("create");
    {
        use std::io::Write as _;
        (&f).write_all(&blob()).expect("write");
    }
    f.set_len(MAX_FILE + 1).expect("set_len");
    let r = Btf::from_file(&path, None);
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Err(BtfError::Malformed(why)) => assert!(why.contains("larger than"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejects_garbage() {
    assert!(Btf::parse(vec![0u8; 4], None).is_err());
    let mut b = blob();
    b.truncate(30);
    assert!(Btf::parse(b, None).is_err());
}
