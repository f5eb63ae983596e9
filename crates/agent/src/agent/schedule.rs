//! Joining the configured pool and keeping one slot per allowed core
//! working for it: forever, with backoff when the pool cannot be joined,
//! starting over when the pool or what is offered to it changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use idlemesh_control::PoolProblemCode;
use idlemesh_protocol::Keypair;
use idlemesh_protocol::api::Capabilities;
use idlemesh_runtime::WorkerCommand;
use tokio::sync::watch;

use super::{PoolProblem, Shared, SlotStatus};
use crate::settings::Machine;
use crate::slot::{Slot, SlotConfig};

const NO_POOL: &str =
    "no pool configured: set one with `idlemesh settings set pool_url URL` or `idlemesh agent --pool URL`";

/// Records why there is no scheduler; true if that changed.
fn set_problem(shared: &Shared, problem: PoolProblem) -> bool {
    shared.pool_problem.lock().expect("lock").replace(problem.clone()).as_ref() != Some(&problem)
}

/// Connects to the configured pool and works for it, forever.
pub(super) async fn schedule(shared: Arc<Shared>, worker: WorkerCommand, device_key: Arc<Keypair>, machine: Machine) {
    let mut failures = 0u32;
    loop {
        let backoff = Duration::from_millis(crate::outbox::backoff_ms(failures + 1, crate::slot::random_u64()));
        let Some(url) = shared.pool_url() else {
            if set_problem(&shared, PoolProblem::new(PoolProblemCode::NoPool, NO_POOL)) {
                tracing::info!("{NO_POOL}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        };
        // Joining is traffic too: on a metered network with nothing allowed, wait.
        // Nor with a policy that cannot be read: it may pin the pool's key.
        let unreadable = shared.settings.lock().expect("settings lock").policy_unreadable();
        let waiting = match unreadable {
            Some(why) => Some(PoolProblem::new(PoolProblemCode::PolicyUnreadable, why)),
            None if shared.watcher.decisions().borrow().traffic != crate::governor::Traffic::All => {
                Some(PoolProblem::new(
                    PoolProblemCode::Metered,
                    "waiting to join: the network is metered (allow_metered is off), or today's transfer cap is used up",
                ))
            }
            None => None,
        };
        if let Some(why) = waiting {
            let message = why.message.clone();
            if set_problem(&shared, why) {
                tracing::info!("{message}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let (limits, enrollment_token, trust) = {
            let s = shared.settings.lock().expect("settings lock");
            let e = s.effective();
            (e.limits(), e.enrollment_token.clone(), e.pool_trust())
        };
        let enrollment_token = shared.join_tokens.lock().expect("lock").get(&url).cloned().or(enrollment_token);
        // The GPU is offered only when the user (or policy) enabled it, and
        // only if a worker finds one; probed once per setting change.
        let wgpu_adapter = if limits.gpu_enabled { gpu_adapter(&worker).await } else { None };
        shared.watcher.gpu_found(limits.gpu_enabled.then_some(wgpu_adapter.is_some()));
        let config = SlotConfig {
            pool_url: url.clone(),
            data_dir: shared.data_dir.clone(),
            ledger_path: shared.info.ledger.clone(),
            worker: worker.clone(),
            capabilities: Capabilities {
                wasm: true,
                wgpu_adapter: wgpu_adapter.clone(),
                cores: limits.cores,
                memory_bytes: limits.memory_per_task_bytes,
            },
            device_info: BTreeMap::from([
                ("cores".to_string(), machine.cores.to_string()),
                ("memory_bytes".to_string(), machine.memory_bytes.to_string()),
            ]),
            enrollment_token,
            // A small local queue: the next task is at hand when one ends.
            max_tasks_per_lease: 2,
            max_idle_poll: Duration::from_secs(30),
            watcher: Some(shared.watcher.clone()),
            require_sandbox: limits.require_sandbox.clone(),
            trust: trust.clone(),
        };
        let first = match Slot::connect(config, device_key.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pool = %url, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot join the pool yet");
                *shared.pool_problem.lock().expect("lock") = Some(PoolProblem {
                    code: e.code(),
                    message: format!("cannot join {url}: {e}"),
                    retry_at_ms: Some(crate::now_ms() + backoff.as_millis() as u64),
                    pool_said: e.pool_said().map(str::to_owned),
                });
                tokio::time::sleep(backoff).await;
                failures += 1;
                continue;
            }
        };
        failures = 0;
        *shared.pool_problem.lock().expect("lock") = None;
        // One slot per allowed core, each running one task at a time in its own worker.
        let mut slots = Vec::new();
        for index in 1..limits.cores {
            match first.another_slot(index) {
                Ok(s) => slots.push(s),
                Err(e) => {
                    tracing::error!(slot = index, error = %e, "cannot open another slot; running fewer tasks at once")
                }
            }
        }
        slots.insert(0, first);
        *shared.scheduler.lock().expect("scheduler lock") = slots.iter().map(Slot::status).collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Switch pools, or the slots and what they offer the pool, when the
        // settings change; the current tasks finish first.
        let watch_settings = {
            let shared = shared.clone();
            let url = url.clone();
            // What the connection was made with: the trust settings too.
            let offered =
                (limits.cores, limits.memory_per_task_bytes, limits.gpu_enabled, limits.require_sandbox.clone(), trust);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let now = {
                        let s = shared.settings.lock().expect("settings lock");
                        let (l, trust) = (s.effective().limits(), s.effective().pool_trust());
                        (l.cores, l.memory_per_task_bytes, l.gpu_enabled, l.require_sandbox, trust)
                    };
                    let changed = now != offered;
                    if shared.pool_url().as_deref() != Some(url.as_str()) || changed {
                        let _ = stop_tx.send(true);
                        return;
                    }
                }
            })
        };
        let runs: Vec<_> = slots
            .into_iter()
            .map(|mut slot| {
                let stop_rx = stop_rx.clone();
                tokio::spawn(async move { slot.run(stop_rx).await })
            })
            .collect();
        for run in runs {
            match run.await {
                Ok(Ok(summary)) => tracing::info!(pool = %url, ?summary, "a slot stopped"),
                Ok(Err(e)) => {
                    tracing::error!(pool = %url, error = %e, "the scheduler stopped; starting again");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => tracing::error!(error = %e, "a scheduler slot panicked"),
            }
        }
        watch_settings.abort();
        shared.scheduler.lock().expect("scheduler lock").clear();
    }
}

/// The adapter a worker finds, or `None` (logged) when there is no usable GPU.
async fn gpu_adapter(worker: &WorkerCommand) -> Option<String> {
    let worker = worker.clone();
    match tokio::task::spawn_blocking(move || worker.probe_gpu()).await.expect("the probe does not panic") {
        Ok(adapter) => {
            tracing::info!(%adapter, "GPU work enabled");
            Some(adapter)
        }
        Err(e) => {
            tracing::warn!(error = %e, "GPU use is enabled but there is no usable GPU; running CPU work only");
            None
        }
    }
}

/// The slots' statuses as one: the first slot's pool and device, every
/// running task, summed totals (results waiting: the shared outbox's count).
pub(super) fn combine(slots: &[SlotStatus]) -> Option<idlemesh_control::SchedulerStatus> {
    let first = slots.first()?;
    let mut total = idlemesh_control::TaskSummary::default();
    for s in slots {
        let t = &s.summary;
        total.tasks_finished += t.tasks_finished;
        total.tasks_failed += t.tasks_failed;
        total.tasks_refused += t.tasks_refused;
        total.cpu_ms += t.cpu_ms;
        total.wall_ms += t.wall_ms;
        total.credits += t.credits;
        total.receipts += t.receipts;
        total.results_pending = total.results_pending.max(t.results_pending);
    }
    let tasks: Vec<_> = slots.iter().filter_map(|s| s.current_task.clone()).collect();
    Some(idlemesh_control::SchedulerStatus {
        pool: first.pool.clone(),
        device_id: first.device_id,
        managed_by: first.managed_by.clone(),
        slots: slots.len(),
        current_task: tasks.first().cloned(),
        current_tasks: tasks,
        summary: total,
        last_pool_error: slots.iter().find_map(|s| s.last_pool_error.clone()),
    })
}
