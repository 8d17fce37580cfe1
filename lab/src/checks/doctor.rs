//! `doctor`: what `ctscope doctor` said of the kernel before the run agrees with the kernel and
//! with what `observe` then did. On the development host doctor must say "no" (a host test
//! checks that); here, on a distro kernel with kprobes, it must say "yes", truthfully, and
//! fentry "yes" where the kernel's config permits tracing programs on conntrack.

use serde_json::Value;

use super::{Check, compare, value_at};

fn str_at<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    let cur = value_at(v, path).map_err(|e| format!("doctor.{e}"))?;
    cur.as_str()
        .ok_or_else(|| format!("doctor.{path} is not a string: {cur}"))
}

fn bool_at(v: &Value, path: &str) -> Result<bool, String> {
    let cur = value_at(v, path).map_err(|e| format!("doctor.{e}"))?;
    cur.as_bool()
        .ok_or_else(|| format!("doctor.{path} is not a bool: {cur}"))
}

pub(super) fn check(
    result: &Value,
    report: &Value,
    same_offsets: bool,
    forced_mode: Option<&str>,
) -> Check {
    compare(
        "doctor",
        (|| {
            let d = result
                .get("doctor")
                .filter(|d| d.is_object())
                .ok_or("no doctor output in the result")?;
            let mut wrong = Vec::new();
            let release = str_at(d, "kernel_release")?;
            if Some(release) != result.get("kernel_release").and_then(Value::as_str) {
                wrong.push(format!("kernel_release {release} is not the VM's"));
            }
            if !bool_at(d, "kprobe/available")? {
                wrong.push(format!(
                    "says kprobes cannot attach: {}",
                    d["kprobe"]["reason"]
                ));
            }
            let mode = str_at(d, "mode")?;
            // A forced mode is not the one doctor predicts for `--mode auto`; nor
            // is kprobe in a fault run whose skewed fentry programs the verifier
            // refused (doctor loaded them with the true offsets).
            let observed = report.get("mode").and_then(Value::as_str);
            let excused = !same_offsets
                && mode == "fentry"
                && observed == Some("kprobe")
                && super::fentry_refused_by_verifier(report);
            if forced_mode.is_none() && !excused && Some(mode) != observed {
                wrong.push(format!(
                    "predicted mode {mode}, observe used {}",
                    report["mode"]
                ));
            }
            // Module BTF, where the kernel has it, is where nf_conn must come from.
            let module_btf = bool_at(d, "btf/nf_conntrack_module")?;
            let source = str_at(d, "btf/nf_conn_source")?;
            let want = if module_btf { "module_btf" } else { "vmlinux" };
            if source != want {
                wrong.push(format!("nf_conn from {source}, expected {want}"));
            }
            // The offsets doctor shows are the ones observe used.
            let offsets = d.pointer("/btf/offsets");
            if offsets.is_none() || (same_offsets && offsets != report.pointer("/probes/offsets")) {
                wrong.push("doctor's offsets differ from observe's".to_string());
            }
            // fentry where the kernel's config permits it (the lab's own reading of it), and
            // a reason where not.
            let conntrack = str_at(d, "conntrack")?;
            let fentry = bool_at(d, "fentry/available")?;
            let reason = d
                .pointer("/fentry/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            match result.get("kernel_fentry").and_then(Value::as_bool) {
                Some(want) if want != fentry => wrong.push(format!(
                    "fentry available {fentry}, but the kernel's config says {want} (reason {reason:?})"
                )),
                _ if !fentry && reason.is_empty() => {
                    wrong.push("fentry unavailable without a reason".to_string());
                }
                _ => {}
            }
            Ok((
                wrong.is_empty(),
                if wrong.is_empty() {
                    format!(
                        "kprobe available, fentry {fentry}, mode {mode}, conntrack {conntrack}, nf_conn from {source}{}",
                        if same_offsets {
                            ", offsets match observe's"
                        } else {
                            ""
                        }
                    )
                } else {
                    wrong.join("; ")
                },
            ))
        })(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::check as check_all;
    use super::super::fixture::{good, scenario, set};

    fn doctor_check(v: &serde_json::Value) -> super::Check {
        check_all(v, &scenario(""))
            .into_iter()
            .find(|c| c.name == "doctor")
            .expect("a doctor check")
    }

    #[test]
    fn truthful_doctor_passes() {
        let c = doctor_check(&good());
        assert!(c.passed, "{c}");
    }

    #[test]
    fn a_wrong_or_missing_doctor_fails_on_what_is_wrong() {
        let wrong = |path: &str, value: serde_json::Value| {
            let mut v = good();
            set(&mut v, path, value);
            let c = doctor_check(&v);
            assert!(!c.passed, "{path}: {c}");
            c.detail
        };
        assert_eq!(
            wrong("/doctor/kprobe/available", false.into()),
            "says kprobes cannot attach: null"
        );
        assert_eq!(
            wrong("/doctor/btf/nf_conn_source", "vmlinux".into()),
            "nf_conn from vmlinux, expected module_btf"
        );
        assert_eq!(
            wrong("/doctor/btf/offsets/off_tuplehash", 24.into()),
            "doctor's offsets differ from observe's"
        );
        assert!(
            wrong("/doctor/fentry/available", true.into())
                .starts_with("fentry available true, but the kernel's config says false"),
        );
        assert_eq!(
            wrong("/doctor/mode", "fentry".into()),
            "predicted mode fentry, observe used \"kprobe\""
        );
        assert_eq!(
            wrong("/doctor/kernel_release", "6.12.0-1-amd64".into()),
            "kernel_release 6.12.0-1-amd64 is not the VM's"
        );
        assert_eq!(
            wrong("/doctor", serde_json::Value::Null),
            "no doctor output in the result"
        );
        assert_eq!(
            wrong("/doctor/btf/nf_conn_source", serde_json::Value::Null),
            "doctor.btf/nf_conn_source is not a string: null"
        );
    }
}
