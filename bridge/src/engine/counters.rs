//! Engine counters: lock-free atomics updated on the hot paths, read as a [`CountersSnapshot`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// TLP kinds as [`tlp::Tlp::kind_name`] names them, in the order counters and snapshots use.
pub const TLP_KINDS: [&str; 18] = [
    "MRd", "MRdLk", "MWr", "IORd", "IOWr", "CfgRd0", "CfgWr0", "CfgRd1", "CfgWr1", "Cpl", "CplD", "CplLk",
    "CplDLk", "Msg", "MsgD", "FetchAdd", "Swap", "CAS",
];

fn kind_index(kind: &str) -> Option<usize> {
    TLP_KINDS.iter().position(|k| *k == kind)
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, shared by every engine task.
        #[derive(Debug, Default)]
        pub struct Counters {
            tlps_in: [AtomicU64; TLP_KINDS.len()],
            tlps_out: [AtomicU64; TLP_KINDS.len()],
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of every counter at one moment.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct CountersSnapshot {
            /// TLPs received per kind, indexed like [`TLP_KINDS`].
            pub tlps_in: [u64; TLP_KINDS.len()],
            /// TLPs sent per kind, indexed like [`TLP_KINDS`].
            pub tlps_out: [u64; TLP_KINDS.len()],
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter (each individually atomic; the set is not one transaction).
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot {
                    tlps_in: std::array::from_fn(|i| self.tlps_in[i].load(Ordering::Relaxed)),
                    tlps_out: std::array::from_fn(|i| self.tlps_out[i].load(Ordering::Relaxed)),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl fmt::Display for CountersSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "in:")?;
                for (kind, n) in TLP_KINDS.iter().zip(self.tlps_in) {
                    if n > 0 { write!(f, " {kind}={n}")?; }
                }
                write!(f, "; out:")?;
                for (kind, n) in TLP_KINDS.iter().zip(self.tlps_out) {
                    if n > 0 { write!(f, " {kind}={n}")?; }
                }
                $(write!(f, concat!("; ", stringify!($name), "={}"), self.$name)?;)*
                Ok(())
            }
        }
    };
}

counters! {
    /// Unsupported Request completions sent.
    ur_sent,
    /// Completer Abort completions sent.
    ca_sent,
    /// Configuration Request Retry Status completions sent.
    crs_sent,
    /// Posted requests that hit nothing (dropped, as the spec asks).
    posted_misses,
    /// TLPs dropped because they did not parse or broke a spec rule.
    malformed,
    /// Poisoned (EP) requests dropped.
    poisoned,
    /// Messages from the root port (logged, not acted on).
    messages_received,
    /// Requests not answered by the server within the device timeout of their arrival, counting
    /// the time queued in the bridge (answered CA).
    device_timeouts,
    /// Non-posted requests that found the non-posted queue full (answered CA at once).
    non_posted_overflow,
    /// Requests the server answered with an error (answered CA).
    device_errors,
    /// Outstanding DMA reads whose completion did not arrive in time.
    completion_timeouts,
    /// Completions for a tag not outstanding (or failing the checks).
    unexpected_completions,
    /// Completions that arrived for a quarantined (timed-out) tag.
    late_completions,
    /// DMA reads that ended with UR or CA from the host.
    dma_failed_status,
    /// Bytes the device read from host memory.
    dma_bytes_read,
    /// Bytes the device wrote to host memory.
    dma_bytes_written,
    /// DMA refused because Bus Master Enable is clear.
    dma_refused_bme,
    /// MSI messages sent.
    msi_sent,
    /// MSI-X messages sent.
    msix_sent,
    /// Assert_INTx messages sent.
    intx_asserted,
    /// Interrupts held pending because the vector was masked (or, for MSI/MSI-X, Bus Master
    /// Enable was clear).
    interrupts_masked,
    /// Device resets (FLR, hot reset, link down).
    resets,
    /// Posted writes dropped because the server was gone (between its loss and reconnection) or
    /// the connection failed while they were being written.
    posted_lost,
    /// Connections re-established to a restarted server (each one a device reset).
    server_reconnects,
    /// Server replies to message ids not in flight, dropped (added when a connection ends).
    vfio_unknown_replies,
    /// Server replies after their request timed out, dropped (added when a connection ends).
    vfio_late_replies,
    /// Server DMA commands refused with EBUSY because the DMA queue was full (added when a
    /// connection ends).
    vfio_dma_refused_busy,
    /// Requests held behind unanswered server DMA, single-socket servers only (added when a
    /// connection ends).
    vfio_held_requests,
    /// Engine tasks that panicked (a bug: always 0).
    task_panics,
}

impl Counters {
    pub(crate) fn count_in(&self, kind: &str) {
        if let Some(i) = kind_index(kind) {
            self.tlps_in[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_out(&self, kind: &str) {
        if let Some(i) = kind_index(kind) {
            self.tlps_out[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the statistics of a vfio-user connection that is ending.
    pub(crate) fn add_client_stats(&self, stats: &transports::vfio_user::ClientStats) {
        Counters::add(&self.vfio_unknown_replies, stats.unknown_replies);
        Counters::add(&self.vfio_late_replies, stats.late_replies);
        Counters::add(&self.vfio_dma_refused_busy, stats.dma_refused_busy);
        Counters::add(&self.vfio_held_requests, stats.held_requests);
    }

    /// Notes how a joined engine task ended: a panic is counted and logged.
    pub(crate) fn joined(&self, result: Option<Result<(), tokio::task::JoinError>>) {
        if let Some(Err(e)) = result {
            if e.is_panic() {
                Counters::inc(&self.task_panics);
                tracing::error!(error = %e, "an engine task panicked");
            }
        }
    }
}

impl CountersSnapshot {
    /// TLPs received of `kind` (a [`TLP_KINDS`] name; 0 for any other).
    pub fn received(&self, kind: &str) -> u64 {
        kind_index(kind).and_then(|i| self.tlps_in.get(i).copied()).unwrap_or(0)
    }

    /// TLPs sent of `kind`.
    pub fn sent(&self, kind: &str) -> u64 {
        kind_index(kind).and_then(|i| self.tlps_out.get(i).copied()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_by_kind_and_displays_nonzero_kinds() {
        let counters = Counters::default();
        counters.count_in("MRd");
        counters.count_in("MRd");
        counters.count_out("CplD");
        counters.count_out("bogus");
        Counters::inc(&counters.ur_sent);
        let snap = counters.snapshot();
        assert_eq!(snap.received("MRd"), 2);
        assert_eq!(snap.sent("CplD"), 1);
        assert_eq!(snap.ur_sent, 1);
        let text = snap.to_string();
        assert!(text.starts_with("in: MRd=2; out: CplD=1; ur_sent=1;"), "{text}");
    }
}
