//! The tlpbridge engine: routing, BAR decode, tag table, timeouts, interrupts, resets, capture.
pub mod bench;
pub mod capture;
pub mod demo;
pub mod engine;
pub mod probe_report;
pub mod runtime;
