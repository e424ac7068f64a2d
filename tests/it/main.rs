//! The integration tests: one binary, one module per area. Each boots the real relay
//! (`app::run` on an ephemeral port, or the real binary as a child process) against the
//! ProsperStack sandbox and drives it as Segment, an operator or an orchestrator would.
//!
//! - [`relay`]: end to end, Segment-shaped requests in, sandbox properties out.
//! - [`reliability`]: latest wins, dedupe, waiting subscribers, outages, dead letters, deletion.
//! - [`coalesce`] and [`efficiency`]: spending the budget well.
//! - [`emails`]: one person whatever the case of their email.
//! - [`latest_wins`]: a property test of latest-wins through store and mapping (no network).
//! - [`crash`]: SIGKILL and SIGTERM of the real binary lose nothing acknowledged.
//! - [`operations`]: health checks, drain, metrics, secrets, logs, configuration errors.
//! - [`operators`]: status, progress lines, a refused key, what reaches the info log.
//! - [`upgrade`]: a store from before schema versions is upgraded by the relay; a newer one is refused.
//! - [`cli_edges`]: replay's usage and unknown ids, `--sandbox` for tools, health URLs, taken ports.
//! - [`doctor`]: `doctor` checks a setup against the sandbox in at most two requests.
//! - [`preview`]: `preview` explains a payload against the sandbox's catalogue, sending nothing else.
//! - [`quick_start`]: the README's quick start, twice in a row, delivers both times.
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
mod latest_wins;
mod operations;
mod operators;
mod preview;
mod quick_start;
mod relay;
mod reliability;
mod store_copy;
mod update_verb;
mod upgrade;
