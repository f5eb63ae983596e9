// Generated from crates/control (idlemesh-control) by its test `typescript_is_fresh`:
// do not edit. To regenerate: IDLEMESH_UPDATE_TS=1 cargo test -p idlemesh-control

/** A setting's value: text, a number, a switch or a list of names. */
export type SettingValue = string | number | boolean | string[];

/** A span of time as serde writes a Rust `Duration`. */
export type Elapsed = { secs: number; nanos: number };

export type Request = { "command": "status" } | { "command": "pause", duration: string | null, only?: Scope, } | { "command": "resume", only?: Scope, } | { "command": "settings_set", key: string, value: string, } | { "command": "settings_schema" } | { "command": "settings_reset" } | { "command": "pools" } | { "command": "pool_join", url: string, token: string | null, temporary: boolean, } | { "command": "pool_leave", url: string, } | { "command": "lend_now" } | { "command": "demo_start" } | { "command": "ledger_entries", kind: string | null, limit: number | null, } | { "command": "ledger_summary" } | { "command": "ledger_verify" } | { "command": "ledger_export", format: string, } | { "command": "agent_retry" };

export type Paused = { 
/**
 * The pause of all work (`none` while one kind may run).
 */
manual_pause: ManualPause, 
/**
 * Each kind's pause (an agent from before it: both as `manual_pause`).
 */
pauses: Pauses, };

export type SettingChanged = { key: string, effective: EffectiveValue | null, };

export type SettingsReset = { kept: string | null, };

export type PoolEntry = { url: string, 
/**
 * The pinned ed25519 key (hex); `null` while joining.
 */
public_key: string | null, current: boolean, 
/**
 * The IT policy sets this pool: it cannot be left.
 */
locked: boolean, device_id: number | null, organisation: string | null, };

export type PoolUrl = { url: string, };

export type LentNow = { pool: string, };

export type Retried = { restarted: boolean, };

export type LedgerVerified = { ok: boolean, ledger: string, entries: number, receipts_checked: number, 
/**
 * Hash of the last entry: anchors the whole chain (empty: no entries).
 */
head: string, first_bad: BadEntry | null, };

export type LedgerExport = { text: string, entries: number, };

export type Refusal = { code: ErrorCode, message: string, };

export type ErrorCode = "locked" | "bad_value" | "unknown_setting" | "bad_duration" | "bad_request" | "forbidden" | "io" | "pool" | "ledger" | "internal" | "not_running" | "control_socket" | "unknown";

export type AgentStatus = { state: State, paused: boolean, reasons: Array<Reason>, 
/**
 * `null` while the agent is starting.
 */
decision: Decision | null, 
/**
 * The user's pause of all work (`none` while one kind may run).
 */
manual_pause: ManualPause | null, 
/**
 * The user's pause of each kind of work.
 */
pauses?: Pauses | null, sensors: SensorsStatus | null, workers: WorkersStatus | null, 
/**
 * The OS layers the latest worker reported; `null` before one started.
 */
sandbox: SandboxReport | null, 
/**
 * What those layers mean, in words.
 */
sandbox_in_words: string | null, scheduler: SchedulerStatus | null, pool_problem: string | null, pool_problem_code: PoolProblemCode | null, 
/**
 * When the agent tries to join again.
 */
pool_retry_at_ms: number | null, 
/**
 * The pool's own words, when it refused this device.
 */
pool_said: string | null, settings: { [key in string]: EffectiveValue }, settings_errors: Array<string>, 
/**
 * Each bad key of the IT policy (the rest apply), or why it cannot be read.
 */
policy_errors: Array<string>, files: Files | null, agent: AgentInfo | null, 
/**
 * The pool joined for this run only (the demo's), if any.
 */
temporary_pool: string | null, 
/**
 * With `state: "error"`: why the agent is not running.
 */
error?: string | null, error_code?: StartProblem | null, 
/**
 * With `state: "error"` or `"starting"`: where the agent keeps its data.
 */
data_dir?: string | null, };

export type State = "starting" | "working" | "waiting_for_work" | "paused" | "no_pool" | "connecting" | "error";

export type PoolProblemCode = "no_pool" | "unreachable" | "refused" | "pool_key_changed" | "insecure_pool" | "policy_unreadable" | "metered" | "cannot_join";

export type StartProblem = "no_keyring" | "keyring_refused" | "keyring_damaged" | "keyring_setting" | "already_running" | "socket_not_private" | "control_socket" | "data_dir" | "not_running" | "other";

export type SensorsStatus = { 
/**
 * Which idle sensor answers (`x11`, `wayland`, `logind`…).
 */
idle_source: string, 
/**
 * Whether input wakes the agent (events from the display server or
 * the compositor); when not, it polls the idle time while work runs.
 */
input_wakes?: boolean, snapshot: Snapshot, };

export type WorkersStatus = { pids: Array<number>, 
/**
 * Frozen now (SIGSTOP / suspended threads): all of them.
 */
frozen: boolean, 
/**
 * Those running GPU kernels.
 */
gpu_pids?: Array<number>, 
/**
 * Those frozen now.
 */
frozen_pids?: Array<number>, };

export type Files = { settings: string, policy: string, };

export type AgentInfo = { version: string, pid: number, data_dir: string, ledger: string, socket: string, 
/**
 * Which keyring holds the device key.
 */
keyring: string, 
/**
 * The device's ed25519 public key (hex).
 */
device_public_key: string, };

export type SchedulerStatus = { pool: string, device_id: number | null, 
/**
 * The organisation this device enrolled with, if any.
 */
managed_by: string | null, slots: number, 
/**
 * The first task running now (`current_tasks` has them all).
 */
current_task: CurrentTask | null, current_tasks: Array<CurrentTask>, summary: TaskSummary, last_pool_error: string | null, };

export type CurrentTask = { job_id: number, task_id: number, 
/**
 * The kernel's SHA-256 (hex).
 */
kernel_sha256: string, started_ms: number, deadline_ms: number, 
/**
 * What the kernel last reported through `host.progress`, 0.0..=1.0;
 * `null` until it reports (many kernels never do).
 */
progress: number | null, 
/**
 * A WGSL kernel on the GPU (else WASM on the processor).
 */
gpu: boolean, 
/**
 * The most memory the task may use: for a GPU task, the bound on the
 * buffers its worker holds while paused in the middle of it (an idle
 * GPU worker is ended when GPU work stops, and holds nothing).
 */
max_memory_bytes: number, };

export type TaskSummary = { tasks_finished: number, tasks_failed: number, tasks_refused: number, cpu_ms: number, wall_ms: number, credits: number, receipts: number, 
/**
 * Results still waiting in the outbox.
 */
results_pending: number, };

export type Decision = { action: Action, 
/**
 * For a pause, every reason that holds; for a run, why it may run and how much.
 */
reasons: Array<Reason>, 
/**
 * Which traffic with pools may go out now (computing aside).
 */
traffic: Traffic, };

export type Action = { "action": "run", cores: number, duty_cycle_percent: number, gpu: boolean, cpu?: boolean, } | { "action": "pause" };

export type Reason = { code: ReasonCode, text: string, 
/**
 * The work it stops (or allows): all of it, or one kind.
 */
scope?: Scope, };

export type ReasonCode = "paused_by_user" | "user_active" | "user_idle" | "idle_unknown" | "presence_unknown" | "on_battery" | "battery_low" | "power_ok" | "too_hot" | "outside_hours" | "metered_network" | "upload_cap_reached" | "download_cap_reached" | "other_programs_busy" | "gpu_busy" | "full_screen" | "exclusive_program" | "throttled" | "sandbox_missing" | "policy_unreadable" | "lent_now_by_user";

export type Traffic = "all" | "lease_upkeep" | "none";

export type ManualPause = { "kind": "none" } | { "kind": "until", until_ms: number, } | { "kind": "until_resumed" };

export type Pauses = { cpu: ManualPause, gpu: ManualPause, };

export type Scope = "all" | "cpu" | "gpu";

export type Snapshot = { 
/**
 * When this was taken, ms since the Unix epoch.
 */
at_ms: number, 
/**
 * Minutes since local midnight, for allowed hours.
 */
local_minute_of_day: number, 
/**
 * The local clock's offset from UTC in minutes, to show times the user reads.
 */
utc_offset_minutes: number, user_idle: Elapsed | null, 
/**
 * Load of every other process, percent of the whole machine (our worker excluded).
 */
other_cpu_percent: number | null, 
/**
 * `None` on machines without a battery.
 */
battery: Battery | null, cpu_temp_c: number | null, 
/**
 * The busiest GPU's utilisation, where a driver reports it.
 */
gpu_busy_percent: number | null, 
/**
 * Of that, what other programs use: all of it while no GPU kernel of
 * ours runs; unknown while one does (the counter cannot tell them apart).
 */
other_gpu_percent?: number | null, metered_network: boolean | null, 
/**
 * Whether a worker found a GPU for WGSL kernels, when GPU work is on:
 * `Some(false)` and nothing on the GPU can run. `None`: not asked (yet).
 */
gpu_found?: boolean | null, 
/**
 * The program whose window is focused and full screen, if one is
 * (X11; `None` where the display server does not say).
 */
fullscreen?: string | null, 
/**
 * A running program of the user's `exclusive_programs`, if one runs.
 */
exclusive_program?: string | null, uploaded_today_bytes: number, downloaded_today_bytes: number, 
/**
 * The OS layers the latest worker reported; `None` before any started.
 */
sandbox: SandboxReport | null, 
/**
 * `Some` on a machine with a graphical session: what to say when
 * `user_idle` is unknown there (why the machine counts as attended,
 * and why no idle sensor answers). `None`: headless.
 */
graphical_session: string | null, };

export type Battery = { percent: number, on_ac: boolean, };

export type SandboxReport = { profile: Profile, no_new_privs: boolean, 
/**
 * Every inherited descriptor but the supervisor's pipes closed.
 */
fds_closed: boolean, empty_env: boolean, 
/**
 * The working directory is an empty private directory, already removed.
 */
private_cwd: boolean, 
/**
 * Core dumps off; new processes, large files and many descriptors refused.
 */
rlimits: boolean, 
/**
 * The Landlock ABI in force (0: none).
 */
landlock_abi: number, 
/**
 * Landlock refuses TCP bind and connect (ABI 4 and later).
 */
landlock_net: boolean, 
/**
 * Every thread is under Landlock. Before ABI 8 the threads a GPU
 * driver started before the lockdown are not (seccomp still binds them).
 */
landlock_all_threads: boolean, 
/**
 * Own network namespace with only a loopback that is down.
 */
netns: boolean, 
/**
 * The seccomp-bpf allow-list is installed on every thread.
 */
seccomp: boolean, 
/**
 * Each layer not in force, with why.
 */
missing: { [key in Layer]?: string }, };

export type Profile = "cpu" | "gpu";

export type Layer = "no_new_privs" | "fds_closed" | "empty_env" | "private_cwd" | "rlimits" | "landlock" | "landlock_net" | "netns" | "seccomp";

export type EffectiveValue = { 
/**
 * `null` when not set (e.g. no pool chosen yet).
 */
value: SettingValue | null, source: Source, locked: boolean, };

export type Source = "default" | "policy_default" | "user" | "policy";

export type SettingSpec = { key: string, 
/**
 * A short name for a form.
 */
label: string, 
/**
 * What it does, in a sentence or two.
 */
help: string, kind: SettingKind, 
/**
 * The built-in default on this machine; `null`: not set.
 */
default: SettingValue | null, 
/**
 * Locked by the IT policy: no one but the organisation may change it.
 */
locked: boolean, 
/**
 * The policy that locks it (a file, or the registry key on Windows).
 */
locked_by: string | null, };

export type SettingKind = { "type": "bool" } | { "type": "int", min: number, max: number, } | { "type": "float", min: number, max: number, step: number, } | { "type": "hours" } | { "type": "url" } | { "type": "cap_mb" } | { "type": "layers" } | { "type": "programs" };

export type LedgerRecord = { seq: number, at_ms: number, prev_hash: string, hash: string, } & ({ "kind": "disclosure", "body": Disclosed } | { "kind": "task_started", "body": TaskStarted } | { "kind": "task_finished", "body": TaskEnded } | { "kind": "task_failed", "body": TaskEnded } | { "kind": "task_refused", "body": TaskRefused } | { "kind": "task_given_back", "body": TaskGivenBack } | { "kind": "result_refused", "body": ResultRefused } | { "kind": "receipt", "body": ReceiptBody } | { "kind": "traffic", "body": TrafficBody } | { "kind": "paused", "body": PauseBody } | { "kind": "resumed", "body": PauseBody } | { "kind": "pool_left", "body": PoolLeft } | { "kind": "unreadable", "body": Unreadable });

export type LedgerEntry = { "kind": "disclosure", "body": Disclosed } | { "kind": "task_started", "body": TaskStarted } | { "kind": "task_finished", "body": TaskEnded } | { "kind": "task_failed", "body": TaskEnded } | { "kind": "task_refused", "body": TaskRefused } | { "kind": "task_given_back", "body": TaskGivenBack } | { "kind": "result_refused", "body": ResultRefused } | { "kind": "receipt", "body": ReceiptBody } | { "kind": "traffic", "body": TrafficBody } | { "kind": "paused", "body": PauseBody } | { "kind": "resumed", "body": PauseBody } | { "kind": "pool_left", "body": PoolLeft } | { "kind": "unreadable", "body": Unreadable };

export type Disclosed = { pool: string, 
/**
 * The pool's own name (`/v1/info`).
 */
pool_name: string | null, pool_public_key: string | null, device_id: number | null, 
/**
 * Why it was sent (`enrollment`).
 */
purpose: string | null, 
/**
 * The organisation enrolled with, if any.
 */
organisation: string | null, 
/**
 * Each field sent and its value.
 */
fields: { [key in string]: string }, 
/**
 * The pool's published rate then, where it pays.
 */
payout: { per_credit: number; currency: string } | null, device_public_key: string | null, };

export type TaskStarted = { pool: string, job_id: number, task_id: number, replica_id: number, lease_id: number, kernel_kind: "wasm" | "wgsl", kernel_sha256: string, input_sha256: string, input_bytes: number, credits_offered: number, resumed_from_checkpoint: boolean, 
/**
 * Which checkpoint a killed or preempted run saved, when resumed.
 */
resumed_from: Checkpoint | null, 
/**
 * Which of the scheduler's slots ran it.
 */
slot: number, 
/**
 * The OS layers of the worker that ran it.
 */
sandbox: SandboxReport | null, };

export type Checkpoint = { checkpoint_sha256: string, checkpoint_bytes: number, };

export type TaskEnded = { pool: string, job_id: number, task_id: number, replica_id: number, kernel_sha256: string, 
/**
 * As `idlemesh kernel run` says it: ok, trapped, out-of-fuel…
 */
status: string, error: string | null, 
/**
 * Set when it finished.
 */
output_sha256: string | null, output_bytes: number, wall_ms: number, cpu_ms: number, gpu_ms: number, fuel: number | null, peak_memory_bytes: number, 
/**
 * The kernel and input downloaded for it.
 */
bytes_in: number, 
/**
 * The GPU adapter, for a WGSL kernel.
 */
adapter: string | null, 
/**
 * Joules used: measured (`rapl`) or estimated (`model`).
 */
energy_j: number, energy_method: string | null, };

export type TaskRefused = { pool: string, 
/**
 * `null` when the manifest was too broken to name its task.
 */
task_id: number | null, reason: string, };

export type TaskGivenBack = { pool: string, job_id: number, task_id: number, reason: string, };

export type ResultRefused = { pool: string, job_id: number, task_id: number, 
/**
 * The HTTP status the pool answered with.
 */
status: number, code: string, message: string, };

export type ReceiptBody = { pool: string, pool_public_key: string, 
/**
 * The pool's signed payload (a `Receipt` as JSON text) and signature.
 */
receipt: { payload: string; signature: string }, 
/**
 * The pool's published rate when the receipt came (`/v1/info`), which
 * values its credits: the earnings. Absent where the pool does not pay.
 */
payout?: { per_credit: number; currency: string }, };

export type TrafficBody = { pool: string, sent_bytes: number, received_bytes: number, };

export type PauseBody = { reasons: Array<Reason>, };

export type PoolLeft = { pool: string, pool_public_key: string, };

export type Unreadable = { kind: string, body: string, why: string, };

export type LedgerSummary = { totals: Totals, 
/**
 * Keyed by local date, `YYYY-MM-DD`.
 */
per_day: { [key in string]: Totals }, per_pool: { [key in string]: Totals }, disclosures: Array<Disclosure>, };

export type Totals = { tasks_finished: number, tasks_failed: number, cpu_s: number, gpu_s: number, 
/**
 * Joules; an estimate unless every task was measured by RAPL.
 */
energy_j: number, bytes_in: number, bytes_out: number, receipts: number, credits: number, 
/**
 * Credits valued at the paying pools' published rates, per currency.
 */
earnings: { [key in string]: number }, pauses: number, };

export type Disclosure = { at_ms: number, pool: string, fields: { [key in string]: string }, };

export type VerifyReport = { entries: number, receipts_checked: number, 
/**
 * Hash of the last entry: anchors the whole chain (empty: no entries).
 */
head: string, first_bad: BadEntry | null, };

export type BadEntry = { seq: number, reason: string, };
