//! Attribution checks: ctscope's per-namespace figures equal each namespace's own
//! kernel counters, and its per-container NAT shares equal what each container sent.
//!
//! - `netns[<name>]`, for every namespace where the kernel saw conntrack activity: `inserts`
//!   equals the truth's (count rise + early drops in the insert phase), `live_entries` the
//!   count at the end, and the drops obey the identities of the global checks
//!   ([`super::exact`]) against that namespace's own stat deltas.
//! - `netns-quiet`: a namespace without activity has no inserts or drops in ctscope's report,
//!   and ctscope reports no activity in a namespace the lab does not know.
//! - `container[<name>]`: found (by namespace inode, else by name), its address listed,
//!   `own_inserts` equal to its own namespace's inserts (0 without a firewall), and
//!   `nat_inserts` equal to the flows it sent (flows - send_errors) when the host refused none;
//!   when the host refused some, the kernel does not say whose (its counters are per
//!   namespace), so then `nat_inserts <= sent` and `sent - nat_inserts <= drop + insert_failed`.
//! - `containers-nat-sum`: the NAT shares add up to the host's inserts exactly (every host
//!   entry of a lab run is a container's masqueraded flow).

use serde_json::Value;

use super::exact::Drops;
use super::{Check, compare, u64_at, value_at};

/// One comparison inside a check: its text, and whether it held.
struct Terms(Vec<(bool, String)>);

impl Terms {
    fn new() -> Terms {
        Terms(Vec::new())
    }

    fn eq(&mut self, what: &str, ctscope: u64, kernel: u64, kernel_what: &str) {
        self.0.push((
            ctscope == kernel,
            format!("{what} {ctscope} vs {kernel_what} {kernel}"),
        ));
    }

    fn holds(&mut self, ok: bool, text: String) {
        self.0.push((ok, text));
    }

    /// All held; the detail lists what differed first, then everything compared.
    fn finish(self) -> (bool, String) {
        let bad: Vec<&str> = self
            .0
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, t)| t.as_str())
            .collect();
        let all: Vec<&str> = self.0.iter().map(|(_, t)| t.as_str()).collect();
        if bad.is_empty() {
            (true, all.join("; "))
        } else {
            (
                false,
                format!("DIFFERS: {} (all: {})", bad.join("; "), all.join("; ")),
            )
        }
    }
}

fn array<'a>(root: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    match root.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(Value::Null) => Err(format!("{key} is null")),
        Some(other) => Err(format!("{key} is not an array: {other}")),
        None => Err(format!("{key} is missing")),
    }
}

fn find_by_inode<'a>(list: &'a [Value], key: &str, inode: u64) -> Option<&'a Value> {
    list.iter()
        .find(|v| v.get(key).and_then(Value::as_u64) == Some(inode))
}

/// One namespace: inserts, live entries and the three drop identities of [`super::exact`],
/// each against this namespace's own counters.
fn netns_terms(
    ns: &Value,
    truth_ns: &Value,
    early: u64,
    skipped: u64,
    throughout: bool,
) -> Result<(bool, String), String> {
    let mut t = Terms::new();
    let (seen, truth) = (u64_at(ns, "inserts")?, u64_at(truth_ns, "inserts")?);
    if skipped > 0 {
        t.holds(
            seen <= truth.saturating_add(early) && seen.saturating_add(skipped) >= truth,
            format!(
                "inserts {seen} within [truth {truth} - {skipped} the kernel skipped (any namespace's), truth + {early}]"
            ),
        );
    } else if early == 0 {
        t.eq("inserts", seen, truth, "truth");
    } else {
        t.holds(
            seen >= truth && seen - truth <= early,
            format!(
                "inserts {seen} within [truth {truth}, truth + {early} deleted before its snapshot]"
            ),
        );
    }
    t.eq(
        "live_entries",
        u64_at(ns, "live_entries")?,
        u64_at(truth_ns, "count_after")?,
        "count",
    );
    let d = Drops::read(ns)?;
    let drop = u64_at(truth_ns, "stat_delta/drop")?;
    let chain = u64_at(truth_ns, "stat_delta/chaintoolong")?;
    let failed = u64_at(truth_ns, "stat_delta/insert_failed")?;
    let (ok, text) = super::exact::drop_column(&d, drop, throughout);
    t.holds(ok, text);
    if throughout {
        t.eq(
            "chain_too_long",
            d.chain_too_long,
            chain,
            "kernel chaintoolong",
        );
        t.eq(
            &format!(
                "chain_too_long {} + clash {} + other {} =",
                d.chain_too_long, d.clash, d.other
            ),
            d.chain_too_long + d.clash + d.other,
            failed,
            "kernel insert_failed",
        );
    } else {
        t.holds(
            d.clash <= failed.saturating_sub(chain),
            format!(
                "clash {} (probes) <= kernel insert_failed {failed} - chaintoolong {chain}",
                d.clash
            ),
        );
    }
    Ok(t.finish())
}

/// Whether the kernel saw conntrack activity in a namespace; an error when its truth lacks a
/// figure (a namespace whose truth is incomplete is neither active nor quiet).
fn active(truth_ns: &Value) -> Result<bool, String> {
    let mut any = false;
    for p in [
        "inserts",
        "deletes",
        "stat_delta/drop",
        "stat_delta/insert_failed",
        "stat_delta/early_drop",
        "stat_delta/chaintoolong",
    ] {
        any |= u64_at(truth_ns, p).map_err(|w| format!("truth: {w}"))? > 0;
    }
    Ok(any)
}

/// `skipped`: inserts the kernel did not run ctscope's probe for
/// ([`super::skipped_inserts`]): a shortfall of up to that many, in any
/// namespace or container, is the kernel's, and said.
pub(super) fn checks(
    report: &Value,
    truth: &Value,
    early: u64,
    skipped: u64,
    scenario: &crate::scenario::Scenario,
) -> Vec<Check> {
    let mut out = Vec::new();
    let truth_ns = match array(truth, "per_netns") {
        Ok(a) => a,
        Err(why) => return vec![Check::missing("netns", format!("truth: {why}"))],
    };
    let seen = array(report, "netns");

    let mut quiet = Terms::new();
    for tn in truth_ns {
        let name = tn.get("name").and_then(Value::as_str).unwrap_or("?");
        let Some(inode) = tn.get("inode").and_then(Value::as_u64) else {
            out.push(Check::missing(
                &format!("netns[{name}]"),
                "truth has no inode".into(),
            ));
            continue;
        };
        let found = seen
            .as_ref()
            .ok()
            .and_then(|s| find_by_inode(s, "inode", inode));
        match active(tn) {
            Err(why) => out.push(Check::missing(&format!("netns[{name}]"), why)),
            Ok(true) => out.push(compare(
                &format!("netns[{name}]"),
                (|| {
                    let seen = seen.as_ref().map_err(|w| format!("ctscope: {w}"))?;
                    let ns = find_by_inode(seen, "inode", inode).ok_or_else(|| {
                        format!(
                            "ctscope lists no namespace with inode {inode} ({} listed)",
                            seen.len()
                        )
                    })?;
                    let throughout = super::exact::attributed_throughout(report)?;
                    netns_terms(ns, tn, early, skipped, throughout)
                })(),
            )),
            // A quiet namespace may be listed (it has a conntrack table), but with nothing in it.
            Ok(false) => match found {
                Some(ns) => match (u64_at(ns, "inserts"), Drops::read(ns)) {
                    (Ok(n), Ok(d)) => quiet.holds(
                        n == 0 && d.total() == 0,
                        format!("{name}: inserts {n}, drops {} (both 0)", d.total()),
                    ),
                    (Err(why), _) | (_, Err(why)) => quiet.holds(false, format!("{name}: {why}")),
                },
                None => quiet.holds(true, format!("{name}: not listed")),
            },
        }
    }
    if let Ok(seen) = &seen {
        for ns in *seen {
            let name = ns.get("name").and_then(Value::as_str).unwrap_or("?");
            let Some(inode) = ns.get("inode").and_then(Value::as_u64) else {
                quiet.holds(false, format!("{name}: listed without an inode"));
                continue;
            };
            if find_by_inode(truth_ns, "inode", inode).is_none() {
                let what = format!("{name} (inode {inode}, unknown to the lab)");
                quiet.holds(
                    u64_at(ns, "inserts").is_ok_and(|n| n == 0),
                    match u64_at(ns, "inserts") {
                        Ok(n) => format!("{what}: inserts {n} (0)"),
                        Err(why) => format!("{what}: {why}"),
                    },
                );
            }
        }
    }
    out.push(match &seen {
        Ok(_) => {
            let (ok, detail) = quiet.finish();
            Check::new("netns-quiet", ok, detail)
        }
        Err(why) => Check::missing("netns-quiet", format!("ctscope: {why}")),
    });
    out.extend(container_checks(
        report, truth, truth_ns, early, skipped, scenario,
    ));
    out
}

/// What every container's check shares.
struct Shared<'a> {
    truth_ns: &'a [Value],
    host: Option<&'a Value>,
    /// ctscope's `containers`.
    seen: Result<&'a Vec<Value>, String>,
    /// Refusals ctscope counted by reason only (attribution not running then).
    unattributed: Result<u64, String>,
    skipped: u64,
    scenario: &'a crate::scenario::Scenario,
}

/// `container[<name>]`'s comparisons, and its `nat_inserts` for the sum.
fn container_terms(tc: &Value, name: &str, ctx: &Shared) -> Result<((bool, String), u64), String> {
    let seen = ctx.seen.as_ref().map_err(|w| format!("ctscope: {w}"))?;
    let inode = u64_at(tc, "inode")?;
    let c = find_by_inode(seen, "netns_inode", inode)
        .or_else(|| {
            seen.iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        })
        .ok_or_else(|| format!("ctscope lists no container {name} (netns inode {inode})"))?;
    let mut t = Terms::new();
    let listed: Vec<&str> = c
        .get("addresses")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for addr in tc
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        t.holds(
            listed.contains(&addr),
            format!("address {addr} in {listed:?}"),
        );
    }
    let own_truth = find_by_inode(ctx.truth_ns, "inode", inode)
        .ok_or_else(|| format!("truth has no namespace with inode {inode}"))
        .and_then(|n| u64_at(n, "inserts"))?;
    let own = u64_at(c, "own_inserts")?;
    if ctx.skipped > 0 {
        let skipped = ctx.skipped;
        t.holds(
            own <= own_truth && own.saturating_add(skipped) >= own_truth,
            format!(
                "own_inserts {own} within [its namespace's inserts {own_truth} - {skipped} the kernel skipped, {own_truth}]"
            ),
        );
    } else {
        t.eq("own_inserts", own, own_truth, "its namespace's inserts");
    }
    let flows = u64_at(tc, "flows")?;
    let send_errors = u64_at(tc, "send_errors")?;
    let unattributed = ctx.unattributed.clone()?;
    let nat = u64_at(c, "nat_inserts")?;
    nat_terms(
        &mut t,
        c,
        name,
        nat,
        (flows, send_errors),
        unattributed,
        ctx,
    )?;
    Ok((t.finish(), nat))
}

/// The NAT share of one container (`c`, ctscope's) against what it sent: exact when the host
/// refused nothing, else bounded by the host's refusals (see the module doc).
fn nat_terms(
    t: &mut Terms,
    c: &Value,
    name: &str,
    nat: u64,
    (flows, send_errors): (u64, u64),
    unattributed: u64,
    ctx: &Shared,
) -> Result<(), String> {
    let (skipped, scenario) = (ctx.skipped, ctx.scenario);
    let sent = flows.saturating_sub(send_errors);
    let host = ctx.host.ok_or("truth has no host namespace")?;
    let refused_max = u64_at(host, "stat_delta/drop")? + u64_at(host, "stat_delta/insert_failed")?;
    if refused_max == 0 && skipped > 0 {
        t.holds(
            nat <= sent && sent - nat <= skipped,
            format!(
                "nat_inserts {nat} within [sent {sent} - {skipped} the kernel skipped, sent {sent}]"
            ),
        );
    } else if refused_max == 0 {
        t.eq(
            "nat_inserts",
            nat,
            sent,
            &format!("flows {flows} - send_errors {send_errors} ="),
        );
    } else {
        t.holds(
                    nat <= sent && sent - nat <= refused_max.saturating_add(skipped),
                    format!(
                        "nat_inserts {nat} within [sent {sent} - host refusals (<= drop + insert_failed = {refused_max}), sent {sent}] (the kernel does not say whose flows the host refused)"
                    ),
                );
        // ctscope does say: every flow the container sent is either a NAT entry or
        // a refusal ctscope blamed on the container (in its own namespace or the
        // host's). A kept-alive UDP flow sends again, so a refused one can be refused
        // twice, or refused and then inserted: there it is a floor.
        let drops = u64_at(c, "drops")?;
        let kept_alive = scenario
            .containers
            .iter()
            .any(|sc| sc.name == name && sc.keepalive_s.is_some());
        // Abandoned TCP connects that early_drop evicted come back as new
        // decisions too (`[expect] tcp_reopened`, see `Decisions::reopened`).
        let reopened = scenario.expect.tcp_reopened && u64_at(host, "stat_delta/early_drop")? > 0;
        if kept_alive || reopened {
            t.holds(
                nat + drops >= sent,
                format!(
                    "nat_inserts + drops {} >= sent {sent} ({})",
                    nat + drops,
                    if kept_alive {
                        "kept alive: a flow may meet conntrack more than once"
                    } else {
                        "evicted abandoned connects came back as new decisions"
                    }
                ),
            );
        } else if skipped > 0 || unattributed > 0 {
            // Refusals while attribution was off are counted by reason, not by
            // source: a container's share may be short by up to that many.
            let slack = skipped.saturating_add(unattributed);
            t.holds(
                        nat + drops <= sent && sent - (nat + drops) <= slack,
                        format!(
                            "nat_inserts + drops {} within [sent {sent} - ({skipped} the kernel skipped + {unattributed} refusals not attributed), sent {sent}]",
                            nat + drops
                        ),
                    );
        } else {
            t.eq(
                "nat_inserts + drops",
                nat + drops,
                sent,
                &format!("flows {flows} - send_errors {send_errors} ="),
            );
        }
    }
    Ok(())
}

fn container_checks(
    report: &Value,
    truth: &Value,
    truth_ns: &[Value],
    early: u64,
    skipped: u64,
    scenario: &crate::scenario::Scenario,
) -> Vec<Check> {
    let containers = match array(truth, "containers") {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return vec![Check::missing(
                "containers",
                "truth has no containers".into(),
            )];
        }
        Err(why) => return vec![Check::missing("containers", format!("truth: {why}"))],
    };
    let ctx = Shared {
        truth_ns,
        host: truth_ns
            .iter()
            .find(|n| n.get("name").and_then(Value::as_str) == Some("host")),
        seen: array(report, "containers"),
        unattributed: match value_at(report, "attribution/throughout") {
            Ok(Value::Bool(true)) => Ok(0),
            Ok(Value::Bool(false)) => u64_at(report, "attribution/unattributed"),
            Ok(other) => Err(format!("attribution/throughout is not a bool: {other}")),
            Err(e) => Err(e),
        },
        skipped,
        scenario,
    };
    let mut out = Vec::new();
    let mut nat_sum: Result<u64, String> = Ok(0);
    for tc in containers {
        let name = tc.get("name").and_then(Value::as_str).unwrap_or("?");
        let check = container_terms(tc, name, &ctx).map(|(terms, nat)| {
            if let Ok(sum) = nat_sum.as_mut() {
                *sum += nat;
            }
            terms
        });
        if check.is_err() {
            nat_sum = Err(format!("container {name} incomplete"));
        }
        out.push(compare(&format!("container[{name}]"), check));
    }
    out.push(compare(
        "containers-nat-sum",
        (|| {
            let sum = nat_sum?;
            let host = ctx.host.ok_or("truth has no host namespace")?;
            let inserts = u64_at(host, "inserts")?;
            Ok((
                sum.saturating_add(skipped) >= inserts && sum <= inserts.saturating_add(early),
                if early == 0 && skipped == 0 {
                    format!("sum of nat_inserts {sum}, host inserts {inserts}")
                } else {
                    format!(
                        "sum of nat_inserts {sum}, host inserts {inserts} (+ up to {early} deleted before the truth's snapshot, - up to {skipped} the kernel skipped)"
                    )
                },
            ))
        })(),
    ));
    out
}
