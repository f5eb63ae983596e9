// Typed wrappers of every IPC command of docs/app-ipc.md, and the types of
// the JSON they carry. The shell (src-tauri) delegates each command to
// idlemesh-agent; nothing here holds engine logic.

import { invoke } from '@tauri-apps/api/core';
import { listen, type UnlistenFn } from '@tauri-apps/api/event';

// ---------------------------------------------------------------- errors

/** Every code the shell may reject with (docs/app-ipc.md), plus `no_shell`
 * when the page runs outside the app (e.g. `npm run dev` in a browser). */
export type ErrorCode =
  | 'locked'
  | 'bad_value'
  | 'unknown_setting'
  | 'bad_duration'
  | 'bad_request'
  | 'not_running'
  | 'ledger'
  | 'io'
  | 'pool'
  | 'internal'
  | 'no_shell'
  | (string & {});

export class ApiError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
  }
}

/** Turns whatever a rejected `invoke` carried into an `ApiError`. The
 * contract says `{ code, message }`; Tauri itself rejects with a plain
 * string for some failures (unknown command, denied by capabilities). */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e && typeof e === 'object') {
    const o = e as Record<string, unknown>;
    if (typeof o.code === 'string' && typeof o.message === 'string') return new ApiError(o.code, o.message);
    if (typeof o.message === 'string') return new ApiError('internal', o.message);
    return new ApiError('internal', safeJson(e));
  }
  if (typeof e === 'string') {
    try {
      const parsed: unknown = JSON.parse(e);
      if (parsed && typeof parsed === 'object') return toApiError(parsed);
    } catch {
      // a plain sentence
    }
    return new ApiError('internal', e);
  }
  return new ApiError('internal', String(e));
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** True when the page runs inside Tauri (or under `mockIPC`). */
export function inShell(): boolean {
  return typeof window !== 'undefined' && !!(window as unknown as { __TAURI_INTERNALS__?: { invoke?: unknown } })
    .__TAURI_INTERNALS__?.invoke;
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  if (!inShell()) {
    throw new ApiError(
      'no_shell',
      'This dashboard runs inside the Idlemesh app; there is no app to talk to in this window.',
    );
  }
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toApiError(e);
  }
}

// ---------------------------------------------------------------- status

export interface Reason {
  code: string;
  text: string;
}

export type Action =
  | { action: 'run'; cores: number; duty_cycle_percent: number; gpu: boolean }
  | { action: 'pause' };

export interface Decision {
  action: Action;
  reasons: Reason[];
}

export type ManualPause = { kind: 'none' } | { kind: 'until'; until_ms: number } | { kind: 'until_resumed' };

export interface Task {
  job_id: number;
  task_id: number;
  kernel_sha256: string;
  started_ms: number;
  deadline_ms: number;
  /** 0..=1 as the kernel last reported it; null until it reports. */
  progress?: number | null;
}

export interface SchedulerSummary {
  tasks_finished: number;
  tasks_failed: number;
  tasks_refused: number;
  credits: number;
  receipts: number;
  results_pending: number;
  cpu_ms: number;
  wall_ms: number;
}

export interface Scheduler {
  pool: string;
  device_id: number | null;
  managed_by: string | null;
  slots: number;
  current_task: Task | null;
  current_tasks?: Task[];
  summary?: SchedulerSummary;
  last_pool_error: string | null;
}

export interface Snapshot {
  at_ms: number;
  user_idle: { secs: number; nanos: number } | null;
  other_cpu_percent: number | null;
  battery: { percent: number; on_ac: boolean } | null;
  cpu_temp_c: number | null;
  gpu_busy_percent: number | null;
  metered_network: boolean | null;
  downloaded_today_bytes: number;
  uploaded_today_bytes: number;
}

export type SettingSource = 'default' | 'policy_default' | 'user' | 'policy';

export type SettingValue = string | number | boolean | string[] | null;

export interface EffectiveSetting {
  value: SettingValue;
  source: SettingSource;
  locked: boolean;
}

export type State = 'starting' | 'working' | 'waiting_for_work' | 'paused' | 'no_pool' | 'connecting';

export interface Status {
  state: State | (string & {});
  paused: boolean;
  reasons: Reason[];
  /** null while the agent is starting */
  decision: Decision | null;
  manual_pause: ManualPause | null;
  pool_problem: string | null;
  /** why there is no pool connection, for words and buttons: no_pool | unreachable | refused |
   *  pool_key_changed | insecure_pool | policy_unreadable | metered | cannot_join */
  pool_problem_code?: string | null;
  /** when the agent tries to join again */
  pool_retry_at_ms?: number | null;
  /** the pool's own words, when it refused this device */
  pool_said?: string | null;
  /** the app only, with state "error": why the embedded agent is not running */
  error?: string | null;
  error_code?: string | null;
  data_dir?: string;
  scheduler: Scheduler | null;
  sensors: { idle_source: string; snapshot: Snapshot } | null;
  workers: { pids: number[]; frozen: boolean } | null;
  /** the OS layers the latest worker reported; null before one started */
  sandbox?: Sandbox | null;
  /** what those layers mean, in words */
  sandbox_in_words?: string | null;
  settings: Record<string, EffectiveSetting>;
  settings_errors: string[];
  /** each bad key of the IT policy (the rest apply), or why it cannot be read */
  policy_errors?: string[];
  files?: { settings: string; policy: string };
  agent?: {
    version: string;
    pid: number;
    data_dir: string;
    ledger: string;
    keyring?: string;
    device_public_key?: string;
  };
}

/** The worker's OS confinement (`idlemesh status --json` → `sandbox`). */
export interface Sandbox {
  profile: 'cpu' | 'gpu';
  no_new_privs: boolean;
  fds_closed: boolean;
  empty_env: boolean;
  private_cwd: boolean;
  rlimits: boolean;
  landlock_abi: number;
  landlock_net: boolean;
  landlock_all_threads?: boolean;
  netns: boolean;
  seccomp: boolean;
  /** each layer not in force, with why */
  missing: Record<string, string>;
}

// ---------------------------------------------------------------- ledger

export interface Entry {
  seq: number;
  at_ms: number;
  kind: string;
  body: Record<string, unknown> | null;
  prev_hash: string;
  hash: string;
}

export interface Totals {
  tasks_finished: number;
  tasks_failed: number;
  cpu_s: number;
  gpu_s: number;
  energy_j: number;
  bytes_in: number;
  bytes_out: number;
  receipts: number;
  credits: number;
  /** Credits valued at the paying pools' published rates, per currency code. */
  earnings?: Record<string, number>;
  pauses: number;
}

export interface Disclosure {
  at_ms: number;
  pool: string;
  fields: Record<string, unknown> | null;
}

export interface LedgerSummary {
  totals: Totals;
  per_day: Record<string, Totals>;
  per_pool: Record<string, Totals>;
  disclosures: Disclosure[];
}

export interface VerifyResult {
  ok: boolean;
  entries: number;
  receipts_checked: number;
  head: string;
  first_bad: null | { seq: number; reason: string };
  ledger: string;
}

export interface ExportResult {
  path: string;
  entries: number;
}

// ---------------------------------------------------------------- pools, app

export interface Pool {
  url: string;
  public_key: string;
  current: boolean;
  locked: boolean;
  device_id: number | null;
  organisation: string | null;
}

export interface AppInfo {
  version: string;
  first_run: boolean;
  autostart: boolean;
  demo_url: string | null;
  kernel_access: { allowed: string[]; denied: string[] };
}

export type PauseDuration = '15m' | '1h' | 'tomorrow' | 'indefinitely';

// ---------------------------------------------------------------- commands

export const api = {
  status: () => call<Status>('status'),
  pause: (duration: PauseDuration) => call<{ manual_pause: ManualPause }>('pause', { duration }),
  resume: () => call<{ manual_pause: ManualPause }>('resume'),
  settingsSet: (key: string, value: string) =>
    call<{ key: string; effective: EffectiveSetting | null }>('settings_set', { key, value }),
  ledgerEntries: (kind: string | null, limit: number) => call<Entry[]>('ledger_entries', { kind, limit }),
  ledgerSummary: () => call<LedgerSummary>('ledger_summary'),
  ledgerVerify: () => call<VerifyResult>('ledger_verify'),
  ledgerExport: (format: 'csv' | 'json') => call<ExportResult>('ledger_export', { format }),
  pools: () => call<Pool[]>('pools'),
  poolJoin: (url: string, token: string | null) => call<{ url: string }>('pool_join', { url, token }),
  poolLeave: (url: string) => call<{ url: string }>('pool_leave', { url }),
  demoStart: () => call<{ url: string }>('demo_start'),
  demoStartNow: () => call<{ pool: string }>('demo_start_now'),
  appInfo: () => call<AppInfo>('app_info'),
  firstRunDismiss: () => call<{ first_run: boolean }>('first_run_dismiss'),
  agentRetry: () => call<{ restarted: boolean }>('agent_retry'),
  settingsReset: () => call<{ kept: string | null }>('settings_reset'),
  autostartSet: (enabled: boolean) => call<{ autostart: boolean }>('autostart_set', { enabled }),
};

/** Subscribes to the `status` event; resolves to a function that unsubscribes. */
export async function onStatus(handler: (s: Status) => void): Promise<UnlistenFn> {
  if (!inShell()) return () => {};
  return listen<Status>('status', (e) => handler(e.payload));
}
