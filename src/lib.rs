//! prosperstack-relay: Segment Identify calls in, ProsperStack subscriber custom properties out.
pub mod app;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod health;
pub mod identify;
pub mod ingest;
pub mod mapping;
pub mod metrics;
pub mod prosperstack;
pub mod resolve;
pub mod retry;
pub mod sandbox;
pub mod store;
pub mod telemetry;
