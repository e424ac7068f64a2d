//! prosperstack-relay: Segment Identify calls in, ProsperStack subscriber custom properties out.
//!
//! The pipeline, one module a stage:
//! - [`ingest`]: axum handlers for `POST /v1/segment` (signature, bearer token) and the
//!   Tracking API (`/v1/batch`, … with write keys, gzip): body limit, disk watermark, parsing
//!   budget, the three body shapes; answers only after the store committed.
//! - [`identify`]: one Segment event → a normalised update (email, flattened traits, Engage
//!   computation, time), a delete request, or an ignored type.
//! - [`import`]: files of history (Segment exports, CSVs) → Segment-shaped Identify events for
//!   the store, in the background lane behind live events.
//! - [`store`]: the durable queue (SQLite in WAL, or PostgreSQL shared by replicas; group
//!   commit): dedupe by messageId, `userId → email`, one job per email (or platform ID) in a
//!   live or background lane, applied timestamps, dead letters, the delivery lease.
//! - [`delivery`]: the worker: due jobs → one update per subscriber, latest value wins,
//!   retries, waiting subscribers, dead letters.
//! - [`resolve`]: email or platform ID → subscriber through a moka cache, by look-up or
//!   directory paging, whichever costs less.
//! - [`mapping`]: property catalogue, trait → property matching, typing of values.
//! - [`budget`]: one rate limiter for every upstream request, corrected by `RateLimit-*`.
//! - [`retry`]: pure retry decisions and delays.
//! - [`prosperstack`]: the ProsperStack API client (HTTP and the API's types only).
//!
//! Around it: [`config`] (one typed settings tree from file and environment; each stage owns
//! its section), [`app`] (wiring, run, drain), [`leader`] (which replica delivers: the
//! store's lease, renewed, released on shutdown, with the budget handed over), [`server`]
//! (connections within limits), [`disk`] (free-space watermark), [`clock`] (the one source of
//! time), [`status`] (progress, `/status`), [`health`] (`/healthz`, `/readyz`, `/metrics`),
//! [`metrics`], [`telemetry`] (logs), and [`cli`] (subcommands).
//!
//! Beside it in the workspace: `crates/prosperstack-sandbox`, the strict ProsperStack simulator
//! behind `serve --sandbox` and the tests, and `crates/relay-bench`, the benchmarks' binary.
pub mod app;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod disk;
pub mod health;
pub mod identify;
pub mod import;
pub mod ingest;
pub mod leader;
pub mod mapping;
pub mod metrics;
pub mod prosperstack;
pub mod resolve;
pub mod retry;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
