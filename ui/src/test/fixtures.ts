import type { EffectiveSetting, SettingSpec, Status } from '../lib/api';
import type { Disclosed, TaskEnded, TaskStarted } from '../lib/control.gen';
// What the agent serves for `settings_schema` (written by its own test,
// crates/agent/src/settings/tests.rs), not a copy kept here.
import schemaJson from './settings-schema.json';

export const schema = schemaJson as SettingSpec[];

export function settings(over: Record<string, Partial<EffectiveSetting>> = {}): Record<string, EffectiveSetting> {
  const base: Record<string, EffectiveSetting> = {
    allowed_hours: { value: 'always', source: 'default', locked: false },
    cpu_cores: { value: 1, source: 'default', locked: false },
    cpu_duty_cycle_percent: { value: 60, source: 'default', locked: false },
    daily_download_cap_mb: { value: 'unlimited', source: 'default', locked: false },
    daily_upload_cap_mb: { value: 'unlimited', source: 'default', locked: false },
    gpu_enabled: { value: false, source: 'default', locked: false },
    idle_minutes: { value: 3.0, source: 'default', locked: false },
    max_cpu_temp_c: { value: 85.0, source: 'default', locked: false },
    max_other_cpu_percent: { value: 50.0, source: 'default', locked: false },
    memory_per_task_mb: { value: 2000, source: 'default', locked: false },
    min_battery_percent: { value: 80, source: 'default', locked: false },
    pause_on_metered_network: { value: true, source: 'default', locked: false },
    pool_url: { value: 'http://127.0.0.1:18470', source: 'user', locked: false },
    run_on_battery: { value: false, source: 'default', locked: false },
  };
  for (const [k, v] of Object.entries(over)) base[k] = { ...base[k], ...v };
  return base;
}

/** A status like `idlemesh status --json` prints (docs/app-ipc.md). */
export function status(over: Partial<Status> = {}): Status {
  const base: Status = {
    state: 'working',
    paused: false,
    reasons: [
      { code: 'idle_unknown', text: 'no input sensor here (headless): running as if nobody were using this machine' },
      { code: 'power_ok', text: 'on mains power (no battery)' },
      { code: 'throttled', text: 'using 1 core at 60% duty cycle' },
    ],
    decision: {
      action: { action: 'run', cores: 1, duty_cycle_percent: 60, gpu: false },
      reasons: [],
      traffic: 'all',
    },
    manual_pause: { kind: 'none' },
    pool_problem: null,
    scheduler: {
      pool: 'http://127.0.0.1:18470',
      device_id: 1,
      managed_by: null,
      slots: 1,
      current_task: {
        job_id: 1,
        task_id: 3,
        kernel_sha256: '8abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678',
        started_ms: Date.now() - 65_000,
        deadline_ms: Date.now() + 600_000,
        progress: 0.425,
        gpu: false,
        max_memory_bytes: 268_435_456,
      },
      current_tasks: [],
      summary: {
        tasks_finished: 2,
        tasks_failed: 0,
        tasks_refused: 0,
        credits: 2.5,
        receipts: 2,
        results_pending: 0,
        cpu_ms: 1000,
        wall_ms: 1200,
      },
      last_pool_error: null,
    },
    sensors: {
      idle_source: 'none',
      snapshot: {
        at_ms: Date.now(),
        local_minute_of_day: 600,
        utc_offset_minutes: 0,
        user_idle: null,
        other_cpu_percent: 0.5,
        battery: null,
        cpu_temp_c: null,
        gpu_busy_percent: null,
        metered_network: null,
        downloaded_today_bytes: 0,
        uploaded_today_bytes: 0,
        sandbox: null,
        graphical_session: null,
      },
    },
    workers: { pids: [1234], frozen: false },
    settings: settings(),
    settings_errors: [],
    files: { settings: '/home/u/.config/idlemesh/settings.toml', policy: '/etc/idlemesh/policy.toml' },
    agent: {
      version: '0.1.0',
      pid: 1,
      data_dir: '/d',
      ledger: '/d/ledger.sqlite',
      socket: '/run/user/1000/idlemesh/agent.sock',
      keyring: 'secret-service',
      device_public_key: '5f'.repeat(32),
    },
    pool_problem_code: null,
    pool_retry_at_ms: null,
    pool_said: null,
    sandbox: null,
    sandbox_in_words: null,
    policy_errors: [],
    temporary_pool: null,
  };
  return { ...base, ...over } as Status;
}

export const emptyTotals = {
  tasks_finished: 0,
  tasks_failed: 0,
  cpu_s: 0,
  gpu_s: 0,
  energy_j: 0,
  bytes_in: 0,
  bytes_out: 0,
  receipts: 0,
  credits: 0,
  earnings: {},
  pauses: 0,
};

/** A `task_finished` / `task_failed` body as the agent writes it. */
export function taskEnded(over: Partial<TaskEnded> = {}): TaskEnded {
  return {
    pool: 'http://p',
    job_id: 1,
    task_id: 3,
    replica_id: 1,
    kernel_sha256: '8abc'.repeat(16),
    status: 'ok',
    error: null,
    output_sha256: null,
    output_bytes: 0,
    wall_ms: 0,
    cpu_ms: 0,
    gpu_ms: 0,
    fuel: null,
    peak_memory_bytes: 0,
    bytes_in: 0,
    adapter: null,
    energy_j: 0,
    energy_method: 'model',
    ...over,
  };
}

export function taskStarted(over: Partial<TaskStarted> = {}): TaskStarted {
  return {
    pool: 'http://p',
    job_id: 1,
    task_id: 3,
    replica_id: 1,
    lease_id: 1,
    kernel_kind: 'wasm',
    kernel_sha256: '8abc'.repeat(16),
    input_sha256: '1234'.repeat(16),
    input_bytes: 64,
    credits_offered: 1,
    resumed_from_checkpoint: false,
    resumed_from: null,
    slot: 0,
    sandbox: null,
    ...over,
  };
}

export function disclosed(over: Partial<Disclosed> = {}): Disclosed {
  return {
    pool: 'http://p',
    pool_name: null,
    pool_public_key: null,
    device_id: 1,
    purpose: 'enrollment',
    organisation: null,
    fields: { cores: '2' },
    payout: null,
    device_public_key: null,
    ...over,
  };
}

export const appInfo = {
  version: '0.1.0',
  first_run: false,
  autostart: false,
  demo_url: null,
  kernel_access: {
    allowed: ['its own input and parameters', 'a fixed clock'],
    denied: ['your files', 'the network', 'other programs'],
  },
};
