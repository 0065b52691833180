//! Reading what `tlpbridge run` prints to stderr when it stops, whatever `RUST_LOG` says: the
//! `tlpbridge run finished: ` line with the engine's counters
//! (`in: ...; out: ...; ur_sent=0; ca_sent=3; ...`).

/// The last `tlpbridge run finished` line of a log, if the bridge got that far.
pub fn final_counters_line(log: &str) -> Option<&str> {
    log.lines().rev().find(|line| line.contains("tlpbridge run finished"))
}

/// The value of counter `name` (e.g. `ca_sent`) in the final counters line; `None` when there
/// is no such line or the counter is not in it.
pub fn bridge_counter(log: &str, name: &str) -> Option<u64> {
    let line = final_counters_line(log)?;
    let at = line.find(&format!("; {name}="))? + name.len() + 3;
    line.get(at..)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-11-22T02:31:43Z WARN tlpbridge: something\n\
        tlpbridge run finished: in: MRd=778 CplD=1029; out: MRd=304 Cpl=41; ur_sent=0; ca_sent=18; \
        crs_sent=5; unexpected_completions=0; msix_sent=61\n";

    #[test]
    fn reads_counters_from_the_final_line() {
        assert!(final_counters_line(LOG).is_some_and(|l| l.contains("ca_sent=18")));
        assert_eq!(bridge_counter(LOG, "ca_sent"), Some(18));
        assert_eq!(bridge_counter(LOG, "ur_sent"), Some(0));
        assert_eq!(bridge_counter(LOG, "msix_sent"), Some(61));
        // `sent` alone is not a counter, and TLP kinds are not `; name=` fields.
        assert_eq!(bridge_counter(LOG, "sent"), None);
        assert_eq!(bridge_counter(LOG, "MRd"), None);
        assert_eq!(bridge_counter(LOG, "posted_lost"), None);
        assert_eq!(bridge_counter("no counters here", "ca_sent"), None);
    }
}
