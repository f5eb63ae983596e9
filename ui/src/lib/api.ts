// Typed wrappers of every IPC command of docs/app-ipc.md, and the types of
// the JSON they carry. The shell (src-tauri) delegates each command to
// idlemesh-agent; nothing here holds engine logic.

import { invoke } from '@tauri-apps/api/core';
import { listen, type UnlistenFn } from '@tauri-apps/api/event';
// The agent's control API, generated from its Rust types (crates/control):
// the status, its reasons and the settings schema are the agent's own types.
import type {
  AgentStatus,
  CurrentTask,
  EffectiveValue,
  LedgerRecord,
  LedgerSummary,
  LedgerVerified,
  LentNow,
  Paused,
  PoolEntry,
  PoolUrl,
  Retried,
  SandboxReport,
  SchedulerStatus,
  Scope,
  SettingChanged,
  SettingSpec,
  SettingsReset,
  Source,
  TaskSummary,
} from './control.gen';

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


export type {
  Action,
  Decision,
  Pauses,
  Scope,
  Disclosure,
  LedgerEntry,
  LedgerSummary,
  Totals,
  ManualPause,
  PoolProblemCode,
  Reason,
  ReasonCode,
  SettingKind,
  SettingSpec,
  SettingValue,
  Snapshot,
  StartProblem,
  State,
} from './control.gen';

export type Status = AgentStatus;
export type Task = CurrentTask;
export type SchedulerSummary = TaskSummary;
export type Scheduler = SchedulerStatus;
export type SettingSource = Source;
export type EffectiveSetting = EffectiveValue;
/** The worker's OS confinement (`idlemesh status --json` → `sandbox`). */
export type Sandbox = SandboxReport;
export type Pool = PoolEntry;

// ---------------------------------------------------------------- ledger

/** A ledger entry: `kind` and its typed `body`, with its place in the chain. */
export type Entry = LedgerRecord;
export type VerifyResult = LedgerVerified;

export interface ExportResult {
  path: string;
  entries: number;
}

// ---------------------------------------------------------------- pools, app

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
  /** `only`: one kind of work ('cpu' or 'gpu'); absent: all of it. */
  pause: (duration: PauseDuration, only?: Scope) => call<Paused>('pause', only ? { duration, only } : { duration }),
  resume: (only?: Scope) => (only ? call<Paused>('resume', { only }) : call<Paused>('resume')),
  settingsSet: (key: string, value: string) => call<SettingChanged>('settings_set', { key, value }),
  settingsSchema: () => call<SettingSpec[]>('settings_schema'),
  ledgerEntries: (kind: string | null, limit: number) => call<Entry[]>('ledger_entries', { kind, limit }),
  ledgerSummary: () => call<LedgerSummary>('ledger_summary'),
  ledgerVerify: () => call<VerifyResult>('ledger_verify'),
  ledgerExport: (format: 'csv' | 'json') => call<ExportResult>('ledger_export', { format }),
  pools: () => call<Pool[]>('pools'),
  poolJoin: (url: string, token: string | null) => call<PoolUrl>('pool_join', { url, token }),
  poolLeave: (url: string) => call<PoolUrl>('pool_leave', { url }),
  demoStart: () => call<PoolUrl>('demo_start'),
  demoStartNow: () => call<LentNow>('demo_start_now'),
  appInfo: () => call<AppInfo>('app_info'),
  firstRunDismiss: () => call<{ first_run: boolean }>('first_run_dismiss'),
  agentRetry: () => call<Retried>('agent_retry'),
  settingsReset: () => call<SettingsReset>('settings_reset'),
  autostartSet: (enabled: boolean) => call<{ autostart: boolean }>('autostart_set', { enabled }),
};

/** Subscribes to the `status` event; resolves to a function that unsubscribes. */
export async function onStatus(handler: (s: Status) => void): Promise<UnlistenFn> {
  if (!inShell()) return () => {};
  return listen<Status>('status', (e) => handler(e.payload));
}
