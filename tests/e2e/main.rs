//! End-to-end tests: real processes, real HTTP, real SQLite files.
//!
//! Each test gets its own temp dir as the agent's data dir, so nothing here
//! touches the user's real ledger.

mod agent_daemon;
mod agent_process;
mod api_fuzz;
mod demo;
mod enrollment;
mod fail_closed;
mod gpu_job;
mod harness;
mod heartbeat;
mod hostile;
mod https;
mod jobs;
mod kernel_cli;
mod kernel_doc;
mod lockdown;
mod lost_lease;
mod metered;
#[path = "../common/network_manager.rs"]
mod network_manager;
mod outage;
mod packaging;
mod policy_cli;
#[path = "../common/private_root.rs"]
mod private_root;
mod replicas;
mod restart;
mod sandbox_policy;
mod tampering;
#[path = "../common/tcp_meter.rs"]
mod tcp_meter;
