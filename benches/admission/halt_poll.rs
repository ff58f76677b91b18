//! How long an idle vCPU polls before it halts (the guest's `haltpoll`
//! cpuidle driver), which the benches' figures depend on (`admission.rs` and
//! `scale.rs` print it first). On a VM whose idle vCPUs halt at once, waking
//! the server or the load generator from idle goes through the host (an
//! interrupt sent from one vCPU to another), and the server's share of it
//! counts as its CPU time. A server idle between requests (one connection,
//! or paced) pays it on every request, whatever its own work, which brings
//! the admission rows' ratios nearer to 1 than the servers' own work would.
//!
//! `BENCH_HALT_POLL_NS=<ns>` sets it for the run (as root; the kernel's
//! default is 200000) and puts the machine's value back when the bench ends.

const PARAMETER: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// The setting during the run; the machine's own, put back when dropped.
pub(crate) struct HaltPoll {
    /// The machine's value before the run (None: no haltpoll driver).
    before: Option<String>,
    /// Whether the bench changed it.
    set: bool,
}

impl HaltPoll {
    /// Reads the setting, and sets it from `BENCH_HALT_POLL_NS` when given.
    pub(crate) fn from_env() -> HaltPoll {
        let before = std::fs::read_to_string(PARAMETER)
            .ok()
            .map(|v| v.trim().to_string());
        let Ok(wanted) = std::env::var("BENCH_HALT_POLL_NS") else {
            return HaltPoll { before, set: false };
        };
        assert!(
            wanted.parse::<u64>().is_ok(),
            "BENCH_HALT_POLL_NS={wanted:?}: not a number of nanoseconds"
        );
        assert!(
            before.is_some(),
            "BENCH_HALT_POLL_NS is set, but this machine has no haltpoll cpuidle driver ({PARAMETER})"
        );
        std::fs::write(PARAMETER, &wanted)
            .unwrap_or_else(|e| panic!("BENCH_HALT_POLL_NS: cannot write {PARAMETER}: {e}"));
        HaltPoll { before, set: true }
    }

    /// What the header says about it.
    pub(crate) fn describe(&self) -> String {
        let Some(before) = &self.before else {
            return "idle vCPUs: no haltpoll cpuidle driver".into();
        };
        let now = std::fs::read_to_string(PARAMETER).unwrap_or_default();
        let now = now.trim();
        let own = if self.set {
            format!(" (set by BENCH_HALT_POLL_NS; the machine's {before} ns put back after)")
        } else {
            String::new()
        };
        let meaning = if now == "0" {
            "an idle vCPU halts at once, and waking it exits to the host"
        } else {
            "an idle vCPU polls that long before it halts"
        };
        format!("idle vCPUs: guest_halt_poll_ns {now}{own}: {meaning}")
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let (true, Some(before)) = (self.set, &self.before) {
            let _ = std::fs::write(PARAMETER, before);
        }
    }
}
