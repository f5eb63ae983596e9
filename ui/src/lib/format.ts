// Pure helpers: words for states, times, durations, energy, bytes, the
// "next expected start" sentence, one-line ledger summaries and the order
// of the settings rows. No DOM, no IPC: everything here is unit-tested.
// Values are checked by the agent alone, which says what it refuses.

import type {
  Action,
  ManualPause,
  Pauses,
  SettingKind,
  SettingSource,
  SettingSpec,
  SettingValue,
  Status,
  Totals,
  LedgerEntry,
  Reason,
} from './api';

// ---------------------------------------------------------------- numbers

let numberLocale: string | undefined = undefined;

/** The locale numbers are formatted in; `undefined` is the user's own. Tests pin it. */
export function setNumberLocale(locale: string | undefined): void {
  numberLocale = locale;
}

export function formatNumber(n: number, maxFractionDigits = 2, minFractionDigits = 0): string {
  if (!Number.isFinite(n)) return '–';
  return new Intl.NumberFormat(numberLocale, {
    maximumFractionDigits: maxFractionDigits,
    minimumFractionDigits: minFractionDigits,
  }).format(n);
}

/** Bytes in SI units (1 kB = 1000 B, as the agent's caps count them). */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '–';
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${formatNumber(v, i === 0 ? 0 : v < 10 ? 2 : 1)} ${units[i]}`;
}

/** Joules as watt-hours, or kilowatt-hours from 1 kWh on. */
export function formatEnergy(joules: number): string {
  if (!Number.isFinite(joules) || joules < 0) return '–';
  const wh = joules / 3600;
  if (wh >= 1000) return `${formatNumber(wh / 1000, 2)} kWh`;
  if (wh === 0) return '0 Wh';
  if (wh < 1) return `${formatNumber(wh, 3)} Wh`;
  return `${formatNumber(wh, wh < 100 ? 1 : 0)} Wh`;
}

/** Seconds as hours ("0.42"), for CPU-hours and GPU-hours. */
export function formatHours(seconds: number): string {
  const h = seconds / 3600;
  if (h === 0) return '0';
  return formatNumber(h, h < 10 ? 2 : 1);
}

export function formatCredits(c: number): string {
  return formatNumber(c, c !== 0 && Math.abs(c) < 1 ? 4 : 2);
}

/** "1.25 EUR, 0.50 USD", or null where no pool pays. */
export function formatEarnings(earnings: Record<string, number> | undefined): string | null {
  const entries = Object.entries(earnings ?? {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return null;
  return entries.map(([currency, v]) => `${formatNumber(v, v !== 0 && Math.abs(v) < 1 ? 4 : 2, 2)} ${currency}`).join(', ');
}

export function formatPercent(p: number): string {
  return `${formatNumber(p, p < 10 ? 1 : 0)} %`;
}

// ---------------------------------------------------------------- time

const pad2 = (n: number) => String(n).padStart(2, '0');

/** Local wall-clock time, 24-hour, "14:30" (the agent's reasons use the same). */
export function clock(ms: number): string {
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

/** Local calendar date, "2026-11-29". */
export function localDate(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
}

/** Local date and time, "2026-11-29 14:30:05". */
export function formatDateTime(ms: number): string {
  const d = new Date(ms);
  return `${localDate(ms)} ${clock(ms)}:${pad2(d.getSeconds())}`;
}

/** A moment relative to now, in local time: "14:30", "tomorrow 08:00" or "2026-12-03 08:00". */
export function formatWhen(ms: number, nowMs: number): string {
  const day = localDate(ms);
  if (day === localDate(nowMs)) return clock(ms);
  const tomorrow = new Date(nowMs);
  tomorrow.setDate(tomorrow.getDate() + 1);
  if (day === localDate(tomorrow.getTime())) return `tomorrow ${clock(ms)}`;
  return `${day} ${clock(ms)}`;
}

/** A length of time in words: "45 s", "3 min 12 s", "2 h 05 min", "1 d 3 h". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${pad2(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${pad2(m % 60)} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** A number of minutes in words: "3 minutes", "1 minute", "30 seconds". */
export function minutesWords(minutes: number): string {
  if (!Number.isFinite(minutes) || minutes <= 0) return 'a moment';
  if (minutes < 1) {
    const s = Math.round(minutes * 60);
    return `${s} second${s === 1 ? '' : 's'}`;
  }
  if (minutes >= 120 && minutes % 60 === 0) return `${minutes / 60} hours`;
  const n = formatNumber(minutes, 1);
  return `${n} minute${minutes === 1 ? '' : 's'}`;
}

// ---------------------------------------------------------------- state

const STATE_WORDS: Record<string, string> = {
  working: 'Working for the pool',
  waiting_for_work: 'Waiting for work',
  paused: 'Paused',
  no_pool: 'Not connected to a pool',
  connecting: 'Connecting to the pool',
  starting: 'Starting',
};

export function stateWords(state: string): string {
  return STATE_WORDS[state] ?? state.replace(/_/g, ' ');
}

/** "Paused by you until 14:30" / "Paused by you until you resume", or null. */
export function manualPauseText(mp: ManualPause | null | undefined, nowMs: number): string | null {
  if (!mp || mp.kind === 'none') return null;
  if (mp.kind === 'until') return `Paused by you until ${formatWhen(mp.until_ms, nowMs)}`;
  if (mp.kind === 'until_resumed') return 'Paused by you until you resume';
  return 'Paused by you';
}

/**
 * The user's pause of one kind of work while the other may run ("GPU work
 * paused by you until 14:30"), one line per kind; none when both kinds are
 * paused alike (`manualPauseText` says that) or neither is.
 */
export function kindPauseTexts(pauses: Pauses | null | undefined, nowMs: number): string[] {
  if (!pauses || JSON.stringify(pauses.cpu) === JSON.stringify(pauses.gpu)) return [];
  const lines: string[] = [];
  for (const [what, p] of [
    ['Processor work', pauses.cpu],
    ['GPU work', pauses.gpu],
  ] as const) {
    const text = manualPauseText(p, nowMs);
    if (text) lines.push(text.replace(/^Paused/, `${what} paused`));
  }
  return lines;
}

/** Cores and duty cycle in words, from `decision.action`. */
export function actionWords(action: Action | null | undefined): string {
  if (!action) return 'not decided yet';
  if (action.action === 'pause') return 'none (paused)';
  const duty = action.duty_cycle_percent >= 100 ? 'full time' : `${action.duty_cycle_percent} % of the time`;
  if (action.cpu === false) return `the GPU only, ${duty}`;
  const cores = `${action.cores} core${action.cores === 1 ? '' : 's'}`;
  return `${cores}, ${duty}${action.gpu ? ', and the GPU' : ''}`;
}

export function shortHash(h: string | null | undefined, n = 12): string {
  if (!h) return '';
  return h.length > n ? `${h.slice(0, n)}…` : h;
}

/** First minute of an "HH:MM-HH:MM" window, as "HH:MM", or null. */
function windowStart(hours: SettingValue | null | undefined): string | null {
  if (typeof hours !== 'string') return null;
  const m = /^\s*(\d{2}:\d{2})\s*-/.exec(hours);
  return m ? m[1] : null;
}

/**
 * When work is expected to start again, in plain words (best effort), or
 * null when nothing needs to change (working, starting).
 */
export function nextStartText(status: Status, nowMs: number): string | null {
  const setting = (k: string) => status.settings?.[k]?.value;
  switch (status.state) {
    case 'working':
    case 'starting':
      return null;
    case 'no_pool':
      return 'when you join a pool (see Pools)';
    case 'connecting':
      return 'as soon as the pool answers';
    case 'waiting_for_work':
      return 'as soon as the pool has work for this machine';
  }
  const parts: string[] = [];
  const mp = status.manual_pause;
  if (mp?.kind === 'until') parts.push(`at ${formatWhen(mp.until_ms, nowMs)} when your pause ends`);
  if (mp?.kind === 'until_resumed') parts.push('when you resume');
  const seen = new Set<string>();
  for (const r of status.reasons ?? []) {
    if (seen.has(r.code)) continue;
    seen.add(r.code);
    switch (r.code) {
      case 'user_active': {
        const idle = setting('idle_minutes');
        parts.push(
          typeof idle === 'number'
            ? `when you have been away ${minutesWords(idle)}`
            : 'when you have been away for a while',
        );
        break;
      }
      case 'on_battery':
        parts.push('when the charger is plugged in');
        break;
      case 'battery_low':
        parts.push('when the battery has charged enough');
        break;
      case 'too_hot':
        parts.push('when the CPU has cooled down');
        break;
      case 'outside_hours': {
        const start = windowStart(setting('allowed_hours'));
        parts.push(start ? `at ${start} when your allowed hours begin` : 'when your allowed hours begin');
        break;
      }
      case 'metered_network':
        parts.push('when this machine is on a network that is not metered');
        break;
      case 'upload_cap_reached':
      case 'download_cap_reached':
        if (!seen.has('cap')) parts.push("after midnight, when today's transfer limit resets");
        seen.add('cap');
        break;
      case 'other_programs_busy':
        parts.push('when your other programs need less of the CPU');
        break;
    }
  }
  if (parts.length === 0) return status.state === 'paused' ? 'as soon as the reasons above no longer hold' : null;
  return parts.join(' and ');
}

// ---------------------------------------------------------------- ledger

export const LEDGER_KINDS = [
  'task_started',
  'task_finished',
  'task_failed',
  'task_refused',
  'task_given_back',
  'result_refused',
  'receipt',
  'disclosure',
  'traffic',
  'paused',
  'resumed',
  'pool_left',
] as const satisfies readonly LedgerEntry['kind'][];

const KIND_WORDS: Record<string, string> = {
  task_started: 'Task started',
  task_finished: 'Task finished',
  task_failed: 'Task failed',
  task_given_back: 'Task given back',
  task_refused: 'Task refused',
  result_refused: 'Result refused',
  receipt: 'Receipt',
  disclosure: 'Disclosure',
  traffic: 'Traffic',
  paused: 'Paused',
  resumed: 'Resumed',
  pool_left: 'Left a pool',
  unreadable: 'Unreadable',
};

export function kindWords(kind: string): string {
  return KIND_WORDS[kind] ?? kind.replace(/_/g, ' ');
}

function jobTask(b: { job_id?: number; task_id: number | null }): string {
  if (b.job_id === undefined && b.task_id === null) return 'task';
  return b.job_id === undefined ? `task ${b.task_id ?? '?'}` : `job ${b.job_id}, task ${b.task_id ?? '?'}`;
}

function valueText(v: unknown): string {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'object') {
    try {
      return JSON.stringify(v);
    } catch {
      return String(v);
    }
  }
  return String(v);
}

/** `key = value` pairs of a disclosure's fields. */
export function fieldsText(fields: Record<string, unknown> | null | undefined): string {
  if (!fields || typeof fields !== 'object') return 'nothing';
  const pairs = Object.entries(fields).map(([k, v]) => `${k} = ${valueText(v)}`);
  return pairs.length ? pairs.join(', ') : 'nothing';
}

function reasonsText(reasons: Reason[]): string {
  const texts = reasons.map((r) => r.text).filter((t) => !!t);
  return texts.length ? texts.join('; ') : 'no reasons recorded';
}

function truncate(s: string, n = 160): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/** What a receipt's signed payload says, if it can be read. */
function receiptPayload(payload: string): { job_id: number; task_id: number; credits: number } | null {
  try {
    const r = JSON.parse(payload) as { job_id?: unknown; task_id?: unknown; credits?: unknown };
    if (typeof r.job_id === 'number' && typeof r.task_id === 'number' && typeof r.credits === 'number') {
      return { job_id: r.job_id, task_id: r.task_id, credits: r.credits };
    }
  } catch {
    // shown without its details
  }
  return null;
}

/** One line that says what a ledger entry records. */
export function entrySummary(e: LedgerEntry): string {
  switch (e.kind) {
    case 'task_started': {
      const b = e.body;
      const extra = [`kernel ${shortHash(b.kernel_sha256)}`, b.resumed_from_checkpoint ? 'from a checkpoint' : null]
        .filter(Boolean)
        .join(', ');
      return `${jobTask(b)} started (${extra})`;
    }
    case 'task_finished':
    case 'task_failed': {
      const b = e.body;
      const bits = [b.status];
      if (b.error) bits.push(truncate(b.error, 80));
      bits.push(`${formatNumber(b.cpu_ms, 0)} ms CPU`);
      if (b.gpu_ms) bits.push(`${formatNumber(b.gpu_ms, 0)} ms GPU`);
      if (e.kind === 'task_finished') bits.push(`${formatBytes(b.output_bytes)} out`);
      return `${jobTask(b)} ${e.kind === 'task_finished' ? 'finished' : 'failed'}: ${bits.join(', ')}`;
    }
    case 'task_given_back':
      return `${jobTask(e.body)} given back: ${e.body.reason}`;
    case 'task_refused':
      return `${jobTask(e.body)} refused: ${truncate(e.body.reason, 120)}`;
    case 'result_refused':
      return `the result of ${jobTask(e.body)} was refused by ${e.body.pool}: ${truncate(e.body.message, 120)}`;
    case 'receipt': {
      const r = receiptPayload(e.body.receipt.payload);
      const jt = r ? ` for ${jobTask(r)}` : '';
      const c = r ? `: ${formatCredits(r.credits)} credit${r.credits === 1 ? '' : 's'}` : '';
      return `receipt${jt}${c} from ${e.body.pool}`;
    }
    case 'disclosure':
      return `sent to ${e.body.pool}${e.body.purpose ? ` (${e.body.purpose})` : ''}: ${fieldsText(e.body.fields)}`;
    case 'traffic':
      return `${formatBytes(e.body.sent_bytes)} sent to and ${formatBytes(e.body.received_bytes)} received from ${e.body.pool}`;
    case 'paused':
      return `paused: ${reasonsText(e.body.reasons)}`;
    case 'resumed':
      return `resumed: ${reasonsText(e.body.reasons)}`;
    case 'pool_left':
      return `left ${e.body.pool}`;
    case 'unreadable':
      return `${kindWords(e.body.kind)} (not readable here: ${truncate(e.body.why, 80)}): ${truncate(e.body.body)}`;
  }
}

// ---------------------------------------------------------------- stats

export type Metric = 'cpu_hours' | 'gpu_hours' | 'tasks' | 'credits' | 'energy_wh';

export const METRICS: { id: Metric; label: string }[] = [
  { id: 'cpu_hours', label: 'CPU-hours' },
  { id: 'gpu_hours', label: 'GPU-hours' },
  { id: 'tasks', label: 'Tasks finished' },
  { id: 'credits', label: 'Credits' },
  { id: 'energy_wh', label: 'Energy (Wh, estimated)' },
];

export function metricValue(t: Totals, m: Metric): number {
  switch (m) {
    case 'cpu_hours':
      return t.cpu_s / 3600;
    case 'gpu_hours':
      return t.gpu_s / 3600;
    case 'tasks':
      return t.tasks_finished;
    case 'credits':
      return t.credits;
    case 'energy_wh':
      return t.energy_j / 3600;
  }
}

/**
 * One value per day from the first to the last day of `perDay` (days without
 * entries count as 0), the last `maxDays` of them.
 */
export function dailySeries(
  perDay: Record<string, Totals>,
  metric: Metric,
  maxDays = 60,
): { labels: string[]; values: number[] } {
  const days = Object.keys(perDay)
    .filter((d) => /^\d{4}-\d{2}-\d{2}$/.test(d))
    .sort();
  if (days.length === 0) return { labels: [], values: [] };
  const toUtc = (d: string) => Date.UTC(+d.slice(0, 4), +d.slice(5, 7) - 1, +d.slice(8, 10));
  const dayMs = 86_400_000;
  const last = toUtc(days[days.length - 1]);
  const first = Math.max(toUtc(days[0]), last - (maxDays - 1) * dayMs);
  const labels: string[] = [];
  const values: number[] = [];
  for (let t = first; t <= last; t += dayMs) {
    const label = new Date(t).toISOString().slice(0, 10);
    labels.push(label);
    const totals = perDay[label];
    values.push(totals ? metricValue(totals, metric) : 0);
  }
  return { labels, values };
}

export function isEmptyTotals(t: Totals | null | undefined): boolean {
  if (!t) return true;
  return (
    t.tasks_finished === 0 &&
    t.tasks_failed === 0 &&
    t.receipts === 0 &&
    t.cpu_s === 0 &&
    t.gpu_s === 0 &&
    t.bytes_in === 0 &&
    t.bytes_out === 0
  );
}

// ---------------------------------------------------------------- settings

/** A settings row: the agent's spec, or a plain text input for a key its
 * schema does not name (a newer agent's, or before the schema arrived). */
export type RowSpec = Omit<SettingSpec, 'kind'> & { kind: SettingKind | { type: 'text' } };

export function fallbackSpec(key: string): RowSpec {
  return {
    key,
    label: key.replace(/_/g, ' '),
    help: '',
    kind: { type: 'text' },
    default: null,
    locked: false,
    locked_by: null,
  };
}

/** The rows to show: the agent's schema in its order, then any key the
 * status has that the schema does not (sorted). */
export function settingRows(schema: SettingSpec[], settings: Record<string, unknown>): RowSpec[] {
  const known = schema.filter((s) => s.key in settings);
  const rest = Object.keys(settings)
    .filter((k) => !schema.some((s) => s.key === k))
    .sort()
    .map(fallbackSpec);
  return [...known, ...rest];
}

const SOURCE_WORDS: Record<SettingSource, string> = {
  default: 'default',
  user: 'your setting',
  policy_default: 'organisation default',
  policy: 'organisation',
};

export function sourceWords(source: SettingSource | string): string {
  return SOURCE_WORDS[source as SettingSource] ?? source;
}

/** A setting's value as the text shown in its input. */
export function settingText(v: SettingValue | null | undefined): string {
  if (v === null || v === undefined) return '';
  // A list (require_sandbox) is typed back as names separated by commas.
  if (Array.isArray(v)) return v.join(', ');
  return String(v);
}

// ---------------------------------------------------------------- errors

const ERROR_TITLES: Record<string, string> = {
  not_running: 'The Idlemesh agent is not running',
  no_shell: 'Not inside the Idlemesh app',
  ledger: 'Cannot read the ledger',
  pool: 'Cannot reach the pool',
  locked: 'Managed by your organisation',
  io: 'Could not read or write a file',
  bad_value: 'That value is not accepted',
  bad_request: 'The request was not understood',
};

/** A heading for an error code; the agent's message is shown under it verbatim. */
export function errorTitle(code: string): string {
  return ERROR_TITLES[code] ?? 'Something went wrong';
}
