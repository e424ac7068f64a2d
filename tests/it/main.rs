//! The integration tests: one binary, one module per area. Each boots the real relay
//! (`app::run` on an ephemeral port, or the real binary as a child process) against the
//! ProsperStack sandbox and drives it as Segment, an operator or an orchestrator would.
//!
//! - [`relay`]: end to end, Segment-shaped requests in, sandbox properties out.
//! - [`reliability`]: latest wins, dedupe, waiting subscribers, outages, dead letters, deletion.
//! - [`coalesce`] and [`efficiency`]: spending the budget well.
//! - [`emails`]: one person whatever the case of their email.
//! - [`import`]: history from files queued behind live events, followed to delivery.
//! - [`hostile`]: wrong clocks, slow connections, full disks and big bodies.
//! - [`latest_wins`]: a property test of latest-wins through store and mapping (no network).
//! - [`crash`]: SIGKILL and SIGTERM of the real binary lose nothing acknowledged.
//! - [`node_clients`]: the real `@segment/analytics-node` and `@rudderstack/rudder-sdk-node` send through the relay.
//! - [`operations`]: health checks, drain, metrics, secrets, logs, configuration errors.
//! - [`operators`]: status, progress lines, a refused key, what reaches the info log.
//! - [`upgrade`]: a store from before schema versions is upgraded by the relay; a newer one is refused.
//! - [`cli_edges`]: replay's usage and unknown ids, `--sandbox` for tools, health URLs, taken ports.
//! - [`doctor`]: `doctor` checks a setup against the sandbox in at most two requests.
//! - [`platform_ids`]: Identifies without a usable email land by platform ID.
//! - [`preview`]: `preview` explains a payload against the sandbox's catalogue, sending nothing else.
//! - [`quick_start`]: the README's quick start, twice in a row, delivers both times.
//! - [`tracking`]: the Tracking API endpoints (`/v1/batch`, …): write keys, basic auth, gzip.
//! - [`replicas`]: two real `serve` processes on one PostgreSQL database: failover, rolling
//!   restart, the database cut off, one messageId posted to both (skipped without a server).
//! - [`store_copy`]: a SQLite directory's backlog and dead letters copied into PostgreSQL, then delivered.
//! - [`update_verb`]: a relay on `PUT` against an API that takes only `PATCH` loses nothing.
//! - [`common`]: the harness they share.

mod cli_edges;
mod coalesce;
mod common;
mod crash;
mod doctor;
mod efficiency;
mod emails;
mod hostile;
mod import;
mod latest_wins;
mod node_clients;
mod operations;
mod operators;
mod platform_ids;
mod preview;
mod quick_start;
mod relay;
mod reliability;
mod replicas;
mod store_copy;
mod tracking;
mod update_verb;
mod upgrade;
