use super::*;

#[test]
fn log2_floor_is_the_highest_bit() {
    assert_eq!(log2_floor(0), 0);
    for b in 0..64u32 {
        assert_eq!(log2_floor(1 << b), b);
        assert_eq!(log2_floor((1 << b) | ((1 << b) - 1)), b);
    }
    assert_eq!(log2_floor(u64::MAX), 63);
}

#[test]
fn latency_slots_are_monotonic_and_invert() {
    let mut last = 0;
    for ns in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
        let s = latency_slot(ns);
        assert!(s >= last || ns > 100_000, "slot went down at {ns}");
        last = s;
        let floor = latency_slot_floor(s);
        assert!(floor <= ns, "floor {floor} above {ns}");
        // Slots are at most 25% wide.
        assert!(ns - floor <= ns / 4, "slot of {ns} starts at {floor}");
    }
}

#[test]
fn life_slots_are_monotonic_and_invert() {
    let mut last = 0;
    let mut units = 0u64;
    while units < 1 << 46 {
        let s = life::slot(units);
        assert!(s >= last, "slot went down at {units}");
        assert!(s < life::UNKNOWN_SLOT, "{units} in the unknown slot");
        last = s;
        if units < 1 << 44 {
            let floor = life::slot_floor(s);
            assert!(floor <= units, "floor {floor} above {units}");
            // 16 slots per octave: at most 1/16 wide.
            assert!(
                units - floor <= units / 16,
                "slot of {units} starts at {floor}"
            );
            assert_eq!(life::slot(floor), s);
        }
        units = units + 1 + units / 7;
    }
    assert_eq!(life::slot(u64::MAX), life::UNKNOWN_SLOT - 1);
}

#[test]
fn life_rows_are_a_bijection() {
    let mut seen = [false; life::ROWS as usize];
    for class in [life::TCP, life::UDP, life::ICMP, life::ICMPV6, life::OTHER] {
        for e in 0..end::NAMES.len() as u8 {
            for state in 0..life::TCP_STATES {
                for assured in [false, true] {
                    let r = life::row(class, e, state, assured);
                    assert!(r < life::ROWS, "row {r}");
                    seen[r as usize] = true;
                    let (c, e2, st, a) = life::row_info(r).expect("a row");
                    assert_eq!((c, e2), (class, e));
                    if class == life::TCP && e <= end::TCP_CLOSED {
                        assert_eq!(st, Some(state));
                    }
                    if class == life::UDP {
                        assert_eq!(a, Some(assured));
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "every row is used");
    assert_eq!(life::row_info(life::ROWS), None);
}

#[test]
fn life_tags_are_never_zero_and_fit() {
    for ct in [0u64, 8, 0xffff_8880_0000_0100, u64::MAX] {
        let h = life::hash(ct);
        let t = life::tag(h);
        assert_ne!(t, 0);
        assert_eq!(t & life::BORN_MASK, 0);
    }
}
